import { describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import type { BlockDriver } from '../../../src/block/driver.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { blkreplayDriver } from '../../../src/drivers/blkreplay.js';

/** A test protocol whose requests take as many milliseconds as their offset says. */
const slowDriver: BlockDriver<{ finished: number[] }> = {
  name: 'slow',
  kind: 'protocol',
  options: {},
  async open() {
    return { finished: [] };
  },
  getLength: () => 1 << 20,
  async read(node, offset) {
    await new Promise((r) => setTimeout(r, offset));
    node.state.finished.push(offset);
  },
  async write(node, offset) {
    await new Promise((r) => setTimeout(r, offset));
    if (offset === 5) throw new Error('failed write');
    node.state.finished.push(offset);
  },
};

async function open(driver: string): Promise<{ blk: BlockBackend; finished: number[] }> {
  const layer = new BlockLayer([slowDriver, blkreplayDriver]);
  const node = driver === 'slow'
    ? await layer.openNode(undefined, { driver: 'slow' })
    : await layer.openNode(undefined, { driver: 'blkreplay', 'image.driver': 'slow' });
  const slow = node.driver.name === 'slow' ? node : node.filteredChild!.node;
  return { blk: BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL), finished: (slow.state as { finished: number[] }).finished };
}

async function completionOrder(blk: BlockBackend, offsets: number[]): Promise<number[]> {
  const order: number[] = [];
  await Promise.all(offsets.map((o) => blk.read(o, 1, new Uint8Array(1)).then(() => order.push(o))));
  return order;
}

describe('blkreplay', () => {
  it('completes requests in submission order', async () => {
    const plain = await open('slow');
    expect(await completionOrder(plain.blk, [30, 10, 20])).toEqual([10, 20, 30]);
    const replay = await open('blkreplay');
    expect(await completionOrder(replay.blk, [30, 10, 20])).toEqual([30, 10, 20]);
    // The child still ran them concurrently.
    expect(replay.finished).toEqual([10, 20, 30]);
  });

  it('keeps the order for a failing request without holding up the rest', async () => {
    const { blk } = await open('blkreplay');
    const order: string[] = [];
    const buf = new Uint8Array(1);
    await Promise.all([
      blk.read(20, 1, buf).then(() => order.push('read 20')),
      blk.write(5, 1, buf).catch(() => order.push('write 5 failed')),
      blk.read(1, 1, buf).then(() => order.push('read 1')),
    ]);
    expect(order).toEqual(['read 20', 'write 5 failed', 'read 1']);
  });
});
