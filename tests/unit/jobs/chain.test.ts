import { describe, expect, it } from 'vitest';
import { backingChain, backingNameFrom, findBackingImage, overlayAbove } from '../../../src/jobs/chain.js';
import { newLayer, openChain } from './fixtures.js';

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
});
