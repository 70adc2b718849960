import { describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { isCancelled } from '../../../src/jobs/job.js';
import { stream } from '../../../src/jobs/stream.js';
import { allocationMap, fill, firstDifference, newLayer, openChain, readAll, relinks } from './fixtures.js';

/** base: clusters 0-15 = 1; mid: 8-23 = 2; top: 20-27 = 3 (zero at 30). */
async function threeLayers() {
  const layer = newLayer();
  const [base, mid, top] = await openChain(layer, ['base', 'mid', 'top']);
  await fill(base, 0, 16, 1);
  await fill(mid, 8, 16, 2);
  await fill(top, 20, 8, 3);
  const user = BlockBackend.attach(top, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
  await user.writeZeroes(30 * 65536, 65536);
  return { layer, base, mid, top, user };
}

describe('stream', () => {
  it('copies what lies above the base into top and makes base its backing file', async () => {
    const { layer, base, mid, top, user } = await threeLayers();
    const before = await readAll(top);
    const progress: number[] = [];
    await stream(layer, top, { base, chunkSize: 4 * 65536, onProgress: (done) => progress.push(done) });
    expect(firstDifference(await readAll(top), before)).toBe(-1);
    // mid's clusters 8-19 and 28-... copied; base's own clusters 0-7 are not.
    expect(allocationMap(top)).toBe('0'.repeat(8) + '1'.repeat(20) + '00z' + '0'.repeat(33));
    expect(top.backing!.node).toBe(base);
    expect(mid.closed).toBe(true);
    expect(relinks).toEqual([{ node: 'top', filename: 'base', format: 'memcow' }]);
    // The filter is gone: the user is a parent of top again.
    expect(user.root.node).toBe(top);
    expect(top.parents).toEqual([user.root]);
    expect(progress.every((d, i) => i === 0 || d >= progress[i - 1])).toBe(true);
    expect(progress[progress.length - 1]).toBe(top.getLength());
  });

  it('streams the whole chain when there is no base', async () => {
    const { layer, top } = await threeLayers();
    const before = await readAll(top);
    await stream(layer, top, { chunkSize: 4 * 65536 });
    expect(top.backing).toBeUndefined();
    expect(firstDifference(await readAll(top), before)).toBe(-1);
    expect(allocationMap(top)).toBe('1'.repeat(28) + '00z' + '0'.repeat(33));
    expect(relinks).toEqual([{ node: 'top', filename: '', format: '' }]);
  });

  it('leaves a consistent image when cancelled, and finishes when run again', async () => {
    const { layer, base, top } = await threeLayers();
    const before = await readAll(top);
    const controller = new AbortController();
    const err = await stream(layer, top, {
      base, chunkSize: 65536, inFlight: 2,
      onProgress: (done) => done >= 12 * 65536 && controller.abort(),
      signal: controller.signal,
    }).catch((e: unknown) => e);
    expect(isCancelled(err)).toBe(true);
    expect(top.backing!.node.nodeName).toBe('mid');
    expect(relinks).toEqual([]);
    expect(firstDifference(await readAll(top), before)).toBe(-1);
    expect(top.parents).toHaveLength(1);
    await stream(layer, top, { base });
    expect(firstDifference(await readAll(top), before)).toBe(-1);
    expect(top.backing!.node).toBe(base);
  });

  it('uses the backing file name given', async () => {
    const { layer, base, top } = await threeLayers();
    await stream(layer, top, { base, backingFile: 'elsewhere/base.img' });
    expect(relinks).toEqual([{ node: 'top', filename: 'elsewhere/base.img', format: 'memcow' }]);
  });
});
