/**
 * `blkreplay`: a filter that makes completion order deterministic. Requests start at once on
 * the `image` child, but each completes (successfully or not) only after every request
 * submitted before it has completed: callers see completions in submission order, whatever
 * order the storage finished them in. QEMU uses this for record/replay; qemu-io 7.2 does not
 * have the driver.
 */
import type { BdrvChild } from '../block/child.js';
import { ROLE_FILTER_CHILD, type BlockDriver } from '../block/driver.js';
import type { BlockNode } from '../block/node.js';
import { REQ_WRITE_UNCHANGED } from '../block/flags.js';

interface BlkreplayState {
  image: BdrvChild;
  /** Settles when the most recently submitted request has completed. */
  lastCompletion: Promise<unknown>;
}

/** Start `request` now; complete it in submission order. */
function inOrder(node: BlockNode<BlkreplayState>, request: Promise<void>): Promise<void> {
  const s = node.state;
  // Settle right away so an early failure is not taken for an unhandled one.
  const settled = request.then(() => undefined, (error: unknown) => ({ error }));
  const completion = s.lastCompletion.then(() => settled).then((r) => {
    if (r) throw r.error;
  });
  s.lastCompletion = completion.catch(() => {});
  return completion;
}

export const blkreplayDriver: BlockDriver<BlkreplayState> = {
  name: 'blkreplay',
  kind: 'filter',
  isFilter: true,
  options: {},

  async open(_node, ctx) {
    const image = (await ctx.openChild('image', ROLE_FILTER_CHILD))!;
    return { image, lastCompletion: Promise.resolve() };
  },

  supportedWriteFlags: () => REQ_WRITE_UNCHANGED,
  supportedZeroFlags: () => REQ_WRITE_UNCHANGED,

  getLength: (node) => node.state.image.getLength(),

  read: (node, offset, bytes, buf, flags) => inOrder(node, node.state.image.read(offset, bytes, buf, flags)),
  write: (node, offset, bytes, buf, flags) => inOrder(node, node.state.image.write(offset, bytes, buf, flags)),
  writeZeroes: (node, offset, bytes, flags) => inOrder(node, node.state.image.writeZeroes(offset, bytes, flags)),
  discard: (node, offset, bytes) => inOrder(node, node.state.image.discard(offset, bytes)),
  flush: (node) => inOrder(node, Promise.resolve()),
};
