/**
 * `mirror_top`: the filter a mirror (or commit) job puts above its source while it copies.
 * Reads pass through to the source (`backing`); every write, zero write and discard goes to
 * the source and then to the job's target (`target`), WRITE_UNCHANGED included, so writes that
 * arrive while the job runs reach both sides (QEMU's write-blocking copy mode).
 *
 * The job copies a range under the same range lock a write holds (`withRangeLock`), so a copy
 * (read source, write target) and a write of overlapping bytes never interleave, and two
 * overlapping writes reach source and target in the same order.
 */
import { ROLE_DATA, ROLE_FILTER_CHILD, type BlockDriver } from '../block/driver.js';
import type { BdrvChild } from '../block/child.js';
import type { BlockNode } from '../block/node.js';
import { REQ_MAY_UNMAP, REQ_WRITE_UNCHANGED } from '../block/flags.js';
import { filterChildPerms, PERM_ALL, PERM_WRITE, PERM_WRITE_UNCHANGED } from '../block/permissions.js';
import { supportedZeroFlags } from '../block/io.js';

interface LockedRange {
  start: number;
  end: number;
  released: Promise<void>;
}

interface MirrorTopState {
  source: BdrvChild;
  target: BdrvChild | undefined;
  locked: Set<LockedRange>;
}

/** Run `fn` while holding [offset, offset+bytes) of the mirror_top node exclusively. */
export async function withRangeLock<T>(node: BlockNode, offset: number, bytes: number, fn: () => Promise<T>): Promise<T> {
  const locked = (node.state as MirrorTopState).locked;
  const end = offset + bytes;
  for (;;) {
    const conflict = [...locked].find((r) => r.start < end && offset < r.end);
    if (!conflict) break;
    await conflict.released;
  }
  let release!: () => void;
  const range: LockedRange = { start: offset, end, released: new Promise<void>((r) => (release = r)) };
  locked.add(range);
  try {
    return await fn();
  } finally {
    locked.delete(range);
    release();
  }
}

/** Do the same change on the source and then on the target, holding the range. */
function mirrored(node: BlockNode<MirrorTopState>, offset: number, bytes: number, op: (child: BdrvChild) => Promise<void>): Promise<void> {
  return withRangeLock(node, offset, bytes, async () => {
    await op(node.state.source);
    if (node.state.target) await op(node.state.target);
  });
}

export const mirrorTopDriver: BlockDriver<MirrorTopState> = {
  name: 'mirror_top',
  kind: 'filter',
  isFilter: true,
  options: {},

  async open(_node, ctx) {
    const source = (await ctx.openChild('backing', ROLE_FILTER_CHILD))!;
    const target = await ctx.openChild('target', ROLE_DATA, { allowNone: true });
    return { source, target, locked: new Set() };
  },

  childPerm(node, child, parents) {
    if (child !== node.state.target) return filterChildPerms(parents);
    // Whatever the parents change on the source, the target must really be written.
    return { perm: parents.perm & (PERM_WRITE | PERM_WRITE_UNCHANGED) ? PERM_WRITE : 0, shared: PERM_ALL };
  },

  supportedWriteFlags: () => REQ_WRITE_UNCHANGED,
  supportedZeroFlags: (node) => REQ_WRITE_UNCHANGED | (supportedZeroFlags(node.state.source.node) & REQ_MAY_UNMAP),

  getLength: (node) => node.state.source.getLength(),

  read: (node, offset, bytes, buf, flags) => node.state.source.read(offset, bytes, buf, flags),
  write: (node, offset, bytes, buf, flags) => mirrored(node, offset, bytes, (c) => c.write(offset, bytes, buf, flags)),
  writeZeroes: (node, offset, bytes, flags) => mirrored(node, offset, bytes, (c) => c.writeZeroes(offset, bytes, flags)),
  discard: (node, offset, bytes) => mirrored(node, offset, bytes, (c) => c.discard(offset, bytes)),
};
