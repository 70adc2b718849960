import { describe, expect, it, vi } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { commit, commitImage } from '../../../src/jobs/commit.js';
import { planAboveInChunks } from '../../../src/jobs/mirror.js';
import { allocationMap, CLUSTER, fill, firstDifference, newLayer, openChain, readAll, SIZE } from './fixtures.js';

async function chainWithData() {
  const layer = newLayer();
  const [base, mid, top] = await openChain(layer, ['base', 'mid', 'top']);
  await fill(base, 0, 64, 1);
  await fill(mid, 8, 8, 2);
  await fill(top, 12, 8, 3);
  const user = BlockBackend.attach(top, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
  await user.writeZeroes(40 * CLUSTER, 2 * CLUSTER);
  return { layer, base, mid, top, user };
}

describe('commit', () => {
  it('writes top into its backing file, zeroes as zeroes, and empties top', async () => {
    const { layer, mid, top } = await chainWithData();
    const view = await readAll(top);
    await commit(layer, top, mid, { chunkSize: 4 * CLUSTER });
    expect(allocationMap(top)).toBe('0'.repeat(64));
    expect(firstDifference(await readAll(top), view)).toBe(-1);
    expect(firstDifference(await readAll(mid), view)).toBe(-1);
    expect(allocationMap(mid)).toBe('0'.repeat(8) + '1'.repeat(12) + '0'.repeat(20) + 'zz' + '0'.repeat(22));
    expect(top.parents).toHaveLength(1);
  });

  it('commits every layer above the base, and keeps top with drop', async () => {
    const { layer, base, top } = await chainWithData();
    const view = await readAll(top);
    const before = allocationMap(top);
    await commit(layer, top, base, { drop: true });
    expect(allocationMap(top)).toBe(before);
    expect(firstDifference(await readAll(base), view)).toBe(-1);
  });

  it('grows a smaller base', async () => {
    const layer = newLayer();
    const [base] = await openChain(layer, ['base'], 4 * CLUSTER);
    const top = await layer.openNode(undefined, {
      driver: 'memcow', 'node-name': 'top', 'file.driver': 'memory', 'file.filename': 'top', 'file.size': 8 * CLUSTER, backing: 'base',
    });
    // memcow cannot resize: the error comes from the attempt to grow the base.
    await expect(commit(layer, top, base)).rejects.toThrow('Image format driver does not support resize');
  });

  it('finds the base by name, with qemu-img texts for errors', async () => {
    const { layer, top, user } = await chainWithData();
    const open = async () => user;
    await expect(commitImage(layer, open, { base: 'nowhere.img' })).rejects.toThrow(
      "Did not find 'nowhere.img' in the backing chain of 'top'",
    );
    const view = await readAll(top);
    await commitImage(layer, open, { base: 'base.img' });
    expect(firstDifference(await readAll(layer.findNode('base')!), view)).toBe(-1);
    // -b implies -d
    expect(allocationMap(top)).not.toBe('0'.repeat(64));
    const [lonely] = await openChain(layer, ['lonely']);
    const alone = BlockBackend.attach(lonely, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    await expect(commitImage(layer, async () => alone)).rejects.toThrow('Image does not have a backing file');
  });
});

describe('commit planner', () => {
  it('asks for the status of the clean chunks after a dirty run once', async () => {
    const { mid, top } = await chainWithData();
    const asked: number[] = [];
    const blockStatus = top.driver.blockStatus!;
    // The driver is shared: count top's questions only.
    const spy = vi.spyOn(top.driver as Required<typeof top.driver>, 'blockStatus').mockImplementation((node, offset, bytes, wantZero) => {
      if (node === top) asked.push(offset / CLUSTER);
      return blockStatus(node, offset, bytes, wantZero);
    });
    try {
      const plan = planAboveInChunks(top, mid, mid);
      const actions: string[] = [];
      for (let offset = 0; offset < SIZE;) {
        const { action, bytes } = await plan(offset, SIZE - offset);
        actions.push(`${action} ${offset / CLUSTER}+${bytes / CLUSTER}`);
        offset += bytes;
      }
      expect(actions).toEqual(['skip 0+12', 'copy 12+8', 'skip 20+20', 'zero 40+2', 'skip 42+22']);
      // The dirty runs' starts are asked twice: once above mid, once through the whole chain.
      expect(asked).toEqual([0, 12, 20, 12, 40, 42, 40]);
    } finally {
      spy.mockRestore();
    }
  });
});
