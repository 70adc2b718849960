import { describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import type { BlockDriver } from '../../../src/block/driver.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { blkreplayDriver } from '../../../src/drivers/blkreplay.js';

interface SlowState {
  finished: number[];
  /** Requests the protocol holds until the test lets them finish. */
  pending: Array<{ offset: number; release: () => void }>;
}

/**
 * A test protocol whose requests finish when the test releases them, so the order in which
 * they finish is the test's and not the timers' (which a busy machine reorders).
 */
const slowDriver: BlockDriver<SlowState> = {
  name: 'slow',
  kind: 'protocol',
  options: {},
  async open() {
    return { finished: [], pending: [] };
  },
  getLength: () => 1 << 20,
  async read(node, offset) {
    await new Promise<void>((release) => node.state.pending.push({ offset, release }));
    node.state.finished.push(offset);
  },
  async write(node, offset) {
    await new Promise<void>((release) => node.state.pending.push({ offset, release }));
    if (offset === 5) throw new Error('failed write');
    node.state.finished.push(offset);
  },
};

async function open(driver: string): Promise<{ blk: BlockBackend; state: SlowState }> {
  const layer = new BlockLayer([slowDriver, blkreplayDriver]);
  const node = driver === 'slow'
    ? await layer.openNode(undefined, { driver: 'slow' })
    : await layer.openNode(undefined, { driver: 'blkreplay', 'image.driver': 'slow' });
  const slow = node.driver.name === 'slow' ? node : node.filteredChild!.node;
  return { blk: BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL), state: slow.state as SlowState };
}

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

/** Once the protocol holds all `count` requests, let them finish one by one, lowest offset first. */
async function finishByOffset(state: SlowState, count: number): Promise<void> {
  while (state.pending.length < count) await nextTurn();
  for (const request of [...state.pending].sort((a, b) => a.offset - b.offset)) {
    request.release();
    await nextTurn();
  }
}

async function completionOrder({ blk, state }: { blk: BlockBackend; state: SlowState }, offsets: number[]): Promise<number[]> {
  const order: number[] = [];
  const reads = offsets.map((o) => blk.read(o, 1, new Uint8Array(1)).then(() => order.push(o)));
  await finishByOffset(state, offsets.length);
  await Promise.all(reads);
  return order;
}

describe('blkreplay', () => {
  it('completes requests in submission order', async () => {
    const plain = await open('slow');
    expect(await completionOrder(plain, [30, 10, 20])).toEqual([10, 20, 30]);
    const replay = await open('blkreplay');
    expect(await completionOrder(replay, [30, 10, 20])).toEqual([30, 10, 20]);
    // The child still ran them concurrently.
    expect(replay.state.finished).toEqual([10, 20, 30]);
  });

  it('keeps the order for a failing request without holding up the rest', async () => {
    const { blk, state } = await open('blkreplay');
    const order: string[] = [];
    const buf = new Uint8Array(1);
    const requests = [
      blk.read(20, 1, buf).then(() => order.push('read 20')),
      blk.write(5, 1, buf).catch(() => order.push('write 5 failed')),
      blk.read(1, 1, buf).then(() => order.push('read 1')),
    ];
    await finishByOffset(state, requests.length);
    await Promise.all(requests);
    expect(order).toEqual(['read 20', 'write 5 failed', 'read 1']);
  });
});
