/**
 * `copy-on-read`: a filter that marks every read COPY_ON_READ, so the node below copies what
 * it reads from its backing chain into itself. It takes only `write unchanged` on its child,
 * which is why copy-on-read works with a read-only user and through other filters.
 * With `bottom`, only data from above that node is copied (what the stream job needs).
 */
import { BlkioError } from '../errors.js';
import type { BdrvChild } from '../block/child.js';
import { ROLE_FILTER_CHILD, type BlockDriver } from '../block/driver.js';
import type { BlockNode } from '../block/node.js';
import {
  REQ_COPY_ON_READ, REQ_FUA, REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQ_PREFETCH, REQ_WRITE_UNCHANGED,
} from '../block/flags.js';
import {
  PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE, PERM_WRITE_UNCHANGED, refreshPermissions,
} from '../block/permissions.js';
import { chainNext, isAllocated, isAllocatedAbove, supportedWriteFlags, supportedZeroFlags } from '../block/io.js';

interface CorState {
  file: BdrvChild;
  bottom: BlockNode | undefined;
}

const FORWARDED = PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE;

function findBottom(node: BlockNode, file: BlockNode, name: string): BlockNode {
  const bottom = node.layer.findNode(name);
  if (!bottom) throw new BlkioError('EINVAL', `Bottom node '${name}' not found`);
  if (bottom.isFilter) throw new BlkioError('EINVAL', `Bottom node '${name}' is a filter`);
  for (let n: BlockNode | undefined = file; n; n = chainNext(n)) if (n === bottom) return bottom;
  // QEMU 7.2 loops forever here; the node has to be below us in the backing chain.
  throw new BlkioError('EINVAL', `Bottom node '${name}' is not in the backing chain below the filter`);
}

/** Read with `bottom`: copy only what lies above the bottom node; below it, just read. */
async function readAboveBottom(s: CorState, offset: number, bytes: number, buf: Uint8Array, flags: number): Promise<void> {
  const top = s.file.node;
  while (bytes > 0) {
    let localFlags = flags;
    let { allocated, pnum } = await isAllocated(top, offset, bytes);
    if (!allocated) {
      const below = chainNext(top);
      const above = below
        ? await isAllocatedAbove(below, s.bottom, true, offset, pnum).catch(() => ({ allocated: true, pnum }))
        : { allocated: false, pnum };
      if (above.allocated) localFlags |= REQ_COPY_ON_READ;
      pnum = above.pnum;
    }
    if (!(localFlags & REQ_PREFETCH) || localFlags & REQ_COPY_ON_READ) {
      await s.file.read(offset, pnum, buf.subarray(0, pnum), localFlags);
    }
    offset += pnum;
    bytes -= pnum;
    buf = buf.subarray(pnum);
  }
}

export const copyOnReadDriver: BlockDriver<CorState> = {
  name: 'copy-on-read',
  kind: 'filter',
  isFilter: true,
  options: { bottom: { type: 'json-string' } },
  cannotReopen: true,

  async open(node, ctx) {
    const file = (await ctx.openChild('file', ROLE_FILTER_CHILD))!;
    // Attached, the child takes `write unchanged` at once: a read-only child fails before bottom is looked up.
    refreshPermissions(new Map(), [node]);
    const bottomName = ctx.opts.bottom as string | undefined;
    const bottom = bottomName === undefined ? undefined : findBottom(node, file.node, bottomName);
    return { file, bottom };
  },

  childPerm: (_node, _child, parents) => ({
    perm: (parents.perm & FORWARDED) | PERM_WRITE_UNCHANGED,
    shared: (parents.shared & FORWARDED) | PERM_WRITE_UNCHANGED,
  }),

  supportedReadFlags: () => REQ_PREFETCH,
  supportedWriteFlags: (node) => REQ_WRITE_UNCHANGED | (supportedWriteFlags(node.state.file.node) & REQ_FUA),
  supportedZeroFlags: (node) =>
    REQ_WRITE_UNCHANGED | (supportedZeroFlags(node.state.file.node) & (REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK)),

  getLength: (node) => node.state.file.getLength(),

  read(node, offset, bytes, buf, flags) {
    const s = node.state;
    if (!s.bottom) return s.file.read(offset, bytes, buf, flags | REQ_COPY_ON_READ);
    return readAboveBottom(s, offset, bytes, buf, flags);
  },
  write: (node, offset, bytes, buf, flags) => node.state.file.write(offset, bytes, buf, flags),
  writeZeroes: (node, offset, bytes, flags) => node.state.file.writeZeroes(offset, bytes, flags),
  writeCompressed: (node, offset, bytes, buf) => node.state.file.writeCompressed(offset, bytes, buf),
  discard: (node, offset, bytes) => node.state.file.discard(offset, bytes),
  truncate: (node, size, exact, prealloc) => node.state.file.truncate(size, exact, prealloc),

  describeOptions: (node) => (node.state.bottom ? { bottom: node.state.bottom.nodeName } : {}),
};
