import { describe, expect, it } from 'vitest';
import { backingChain, backingNameFrom, chainStatus, findBackingImage, overlayAbove } from '../../../src/jobs/chain.js';
import { CLUSTER, fill, newLayer, openChain } from './fixtures.js';
import { BlockBackend } from '../../../src/block/backend.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';

describe('backing chain helpers', () => {
  it('walks backing links only and finds images by recorded name or path', async () => {
    const layer = newLayer();
    const [base, mid, top] = await openChain(layer, ['base', 'mid', 'top']);
    expect(backingChain(top)).toEqual([mid, base]);
    expect(backingChain(base)).toEqual([]);
    expect(overlayAbove(top, base)).toBe(mid);
    expect(overlayAbove(top, mid)).toBe(top);
    expect(overlayAbove(top, undefined)).toBe(base);
    expect(() => overlayAbove(mid, top)).toThrow("'top' is not in the backing chain of 'mid'");
    expect(findBackingImage(top, 'base.img')).toBe(base); // the name mid records
    // Another path must name an existing file (memory disks are none).
    expect(findBackingImage(top, './base.img') === undefined).toBe(true);
    expect(findBackingImage(top, 'top') === undefined).toBe(true);
  });

  it('names a backing file relative to the image that records it', () => {
    expect(backingNameFrom('top.qcow2', 'base.qcow2')).toBe('base.qcow2');
    expect(backingNameFrom('a/top.qcow2', 'a/base.qcow2')).toBe('base.qcow2');
    expect(backingNameFrom('a/top.qcow2', 'b/base.qcow2')).toBe('../b/base.qcow2');
    expect(backingNameFrom('a/top.qcow2', '/abs/base.qcow2')).toBe('/abs/base.qcow2');
    expect(backingNameFrom('a/top.qcow2', 'nbd://host/x')).toBe('nbd://host/x');
  });

  it('reports what the layers above a stop node hold', async () => {
    const layer = newLayer();
    const [base, mid, top] = await openChain(layer, ['base', 'mid', 'top']);
    await fill(base, 0, 4, 1);
    await fill(mid, 2, 4, 2);
    const user = BlockBackend.attach(top, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    await user.writeZeroes(3 * CLUSTER, CLUSTER);
    expect(await chainStatus(top, base, 0, 8 * CLUSTER)).toEqual({ allocated: false, zero: false, pnum: 2 * CLUSTER });
    expect(await chainStatus(top, base, 2 * CLUSTER, 8 * CLUSTER)).toEqual({ allocated: true, zero: false, pnum: CLUSTER });
    expect(await chainStatus(top, base, 3 * CLUSTER, 8 * CLUSTER)).toEqual({ allocated: true, zero: true, pnum: CLUSTER });
    expect(await chainStatus(top, undefined, 0, 8 * CLUSTER)).toEqual({ allocated: true, zero: false, pnum: 2 * CLUSTER });
    // Below everything: nothing holds it, it reads as zeroes.
    expect(await chainStatus(top, undefined, 6 * CLUSTER, CLUSTER)).toEqual({ allocated: false, zero: true, pnum: CLUSTER });
  });
});
