import { describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { REQ_WRITE_UNCHANGED } from '../../../src/block/flags.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED } from '../../../src/block/permissions.js';
import { withRangeLock } from '../../../src/drivers/mirror-top.js';
import { memoryDisks, type MemoryState } from '../helpers/memory-driver.js';
import { newLayer } from '../jobs/fixtures.js';

async function mirrorTop() {
  const layer = newLayer();
  const source = await layer.openNode(undefined, { driver: 'memory', filename: 'source', 'node-name': 'source' });
  const target = await layer.openNode(undefined, { driver: 'memory', filename: 'target', 'node-name': 'target' });
  const top = await layer.openNode(undefined, { driver: 'mirror_top', backing: 'source', target: 'target' });
  return { source, target, top };
}

describe('mirror_top', () => {
  it('reads from the source and writes both sides, WRITE_UNCHANGED included', async () => {
    const { top, target } = await mirrorTop();
    memoryDisks.get('source')!.fill(7, 0, 512);
    const guest = BlockBackend.attach(top, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    const buf = new Uint8Array(512);
    await guest.read(0, 512, buf);
    expect(buf[0]).toBe(7);
    await guest.write(4096, 512, new Uint8Array(512).fill(9), REQ_WRITE_UNCHANGED);
    await guest.writeZeroes(0, 512);
    expect(memoryDisks.get('source')!.subarray(4096, 4608).every((b) => b === 9)).toBe(true);
    expect(memoryDisks.get('target')!.subarray(4096, 4608).every((b) => b === 9)).toBe(true);
    const writes = (target as unknown as { state: MemoryState }).state.writes;
    expect(writes.map((w) => [w.offset, w.zero])).toEqual([[4096, false], [0, true]]);
  });

  it('takes write on the target only while its users write', async () => {
    const { top, target } = await mirrorTop();
    const reader = BlockBackend.attach(top, PERM_CONSISTENT_READ, PERM_ALL);
    expect(target.parents[0].perm).toBe(0);
    reader.setPerms(PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED, PERM_ALL);
    expect(target.parents[0].perm).toBe(PERM_WRITE);
  });

  it('serialises overlapping holders of a range, not disjoint ones', async () => {
    const { top } = await mirrorTop();
    const order: string[] = [];
    const slow = (name: string) => async () => {
      order.push(`${name} in`);
      await new Promise((r) => setTimeout(r, 5));
      order.push(`${name} out`);
    };
    await Promise.all([
      withRangeLock(top, 0, 100, slow('a')),
      withRangeLock(top, 50, 100, slow('b')),
      withRangeLock(top, 200, 100, slow('c')),
    ]);
    expect(order.indexOf('b in')).toBeGreaterThan(order.indexOf('a out'));
    expect(order.indexOf('c in')).toBeLessThan(order.indexOf('a out'));
  });
});
