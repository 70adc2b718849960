/**
 * `preallocate`: a filter that, when a write reaches past the end of its file, first extends the
 * file by `prealloc-size` (rounded up to `prealloc-align`) with an efficient zero write, so the
 * file system allocates in large steps. What the writes did not reach is cut off again at close,
 * on a resize and when the filter loses write access. It tracks the ends only while it holds
 * write and resize on its child, which it then shares with nobody.
 */
import { BlkioError } from '../errors.js';
import { roundUp } from '../arithmetic.js';
import type { BdrvChild } from '../block/child.js';
import { ROLE_FILTER_CHILD, type BlockDriver, type ParsedOptions } from '../block/driver.js';
import { REQ_FUA, REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQ_WRITE_UNCHANGED, REQ_ZERO_WRITE } from '../block/flags.js';
import { updateEdgePerms } from '../block/graph.js';
import { filterChildPerms, PERM_ALL, PERM_RESIZE, PERM_WRITE } from '../block/permissions.js';
import { supportedWriteFlags, supportedZeroFlags } from '../block/io.js';

const UNKNOWN = -1;
const WRITE_RESIZE = PERM_WRITE | PERM_RESIZE;

interface PreallocateOptions {
  size: number;
  align: number;
}

interface PreallocateState {
  file: BdrvChild;
  opts: PreallocateOptions;
  /** End of the data written (what the file is cut back to), or UNKNOWN. */
  dataEnd: number;
  /** Start of the preallocated zeroes at the end of the file, or UNKNOWN. */
  zeroStart: number;
  /** End of the file, preallocation included, or UNKNOWN. */
  fileEnd: number;
}

function checkedOptions(opts: ParsedOptions, file: BdrvChild): PreallocateOptions {
  const align = opts['prealloc-align'] as number;
  if (align % 512 !== 0) throw new BlkioError('EINVAL', 'prealloc-align parameter of preallocate filter is not aligned to 512');
  const fileAlign = file.node.limits.requestAlignment;
  if (align % fileAlign !== 0) {
    throw new BlkioError('EINVAL', `prealloc-align parameter of preallocate filter is not aligned to underlying node request alignment (${fileAlign})`);
  }
  return { size: opts['prealloc-size'] as number, align };
}

const canWriteResize = (perm: number): boolean => (perm & WRITE_RESIZE) === WRITE_RESIZE;

function forgetEnds(s: PreallocateState): void {
  s.dataEnd = s.zeroStart = s.fileEnd = UNKNOWN;
}

/** Whether the ends are ours to track; they are forgotten when they are not. */
function tracking(s: PreallocateState): boolean {
  if (canWriteResize(s.file.perm)) return true;
  forgetEnds(s);
  return false;
}

/** Cut the file back to the end of the data written. */
async function dropPreallocation(s: PreallocateState): Promise<void> {
  if (s.dataEnd < 0) return;
  if (s.fileEnd < 0) s.fileEnd = s.file.getLength();
  if (s.dataEnd < s.fileEnd) {
    await s.file.truncate(s.dataEnd, true, 'off');
    s.fileEnd = s.dataEnd;
  }
}

/**
 * Before a write of [offset, offset + bytes): preallocate when it reaches past the file end.
 * True when the range is then known to read as zeroes (a zero write needs nothing more).
 */
async function handleWrite(s: PreallocateState, offset: number, bytes: number, wantZero: boolean): Promise<boolean> {
  if (!tracking(s)) return false;
  const end = offset + bytes;
  if (s.dataEnd < 0) s.dataEnd = s.fileEnd = s.file.getLength();
  if (end <= s.dataEnd) return false;
  s.dataEnd = end;
  if (s.zeroStart < 0 || !wantZero) s.zeroStart = end;
  if (s.fileEnd < 0) s.fileEnd = s.file.getLength();
  if (end <= s.fileEnd) return wantZero && offset >= s.zeroStart;

  const fileAlign = s.file.node.limits.requestAlignment;
  const start = roundUp(wantZero ? Math.min(offset, s.fileEnd) : s.fileEnd, fileAlign);
  const preallocEnd = roundUp(Math.max(start, end) + s.opts.size, Math.max(s.opts.align, fileAlign));
  try {
    await s.file.writeZeroes(start, preallocEnd - start, REQ_NO_FALLBACK);
  } catch {
    // Then the writes extend the file themselves.
    s.fileEnd = UNKNOWN;
    return false;
  }
  s.fileEnd = preallocEnd;
  return wantZero && start <= offset;
}

export const preallocateDriver: BlockDriver<PreallocateState> = {
  name: 'preallocate',
  kind: 'filter',
  isFilter: true,
  options: {
    'prealloc-align': { type: 'size', default: 1 << 20 },
    'prealloc-size': { type: 'size', default: 128 << 20 },
  },

  async open(_node, ctx) {
    const file = (await ctx.openChild('file', ROLE_FILTER_CHILD))!;
    return { file, opts: checkedOptions(ctx.opts, file), dataEnd: UNKNOWN, zeroStart: UNKNOWN, fileEnd: UNKNOWN };
  },

  async close(node) {
    const s = node.state;
    if (s.dataEnd < 0) return;
    // QEMU cuts back while the parents drop their permissions; here they are gone by the
    // time the node closes, so the filter takes write and resize back for the cut.
    updateEdgePerms(s.file, WRITE_RESIZE, s.file.shared & ~WRITE_RESIZE);
    try {
      await dropPreallocation(s);
    } catch {
      // As in QEMU, a close goes on without the cut.
    } finally {
      updateEdgePerms(s.file, 0, PERM_ALL);
    }
  },

  async reopen(node) {
    // Going read-only, the filter loses write access: what it preallocated goes first.
    if (node.readOnly) {
      await dropPreallocation(node.state);
      forgetEnds(node.state);
    }
  },

  prepareReopen(node, opts) {
    const checked = checkedOptions(opts, node.state.file);
    return async () => {
      node.state.opts = checked;
    };
  },

  childPerm(_node, _child, parents) {
    const p = filterChildPerms(parents);
    if (canWriteResize(parents.perm)) {
      p.perm |= WRITE_RESIZE;
      // Nobody else may move the ends the filter tracks.
      p.shared &= ~WRITE_RESIZE;
    }
    return p;
  },

  supportedWriteFlags: (node) => REQ_WRITE_UNCHANGED | (supportedWriteFlags(node.state.file.node) & REQ_FUA),
  supportedZeroFlags: (node) =>
    REQ_WRITE_UNCHANGED | (supportedZeroFlags(node.state.file.node) & (REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK)),

  getLength(node) {
    const s = node.state;
    if (s.dataEnd >= 0) return s.dataEnd;
    const length = s.file.getLength();
    if (tracking(s)) s.dataEnd = s.zeroStart = s.fileEnd = length;
    return length;
  },

  read: (node, offset, bytes, buf, flags) => node.state.file.read(offset, bytes, buf, flags),
  async write(node, offset, bytes, buf, flags) {
    await handleWrite(node.state, offset, bytes, false);
    return node.state.file.write(offset, bytes, buf, flags);
  },
  async writeZeroes(node, offset, bytes, flags) {
    const plain = (flags & ~(REQ_ZERO_WRITE | REQ_NO_FALLBACK)) === 0;
    if (await handleWrite(node.state, offset, bytes, plain)) return;
    return node.state.file.writeZeroes(offset, bytes, flags);
  },
  discard: (node, offset, bytes) => node.state.file.discard(offset, bytes),

  async truncate(node, size, exact, prealloc, flags) {
    const s = node.state;
    if (s.dataEnd >= 0 && size > s.dataEnd) {
      if (s.fileEnd < 0) s.fileEnd = s.file.getLength();
      if (prealloc === 'falloc' && size <= s.fileEnd) {
        // Already there: the preallocation becomes the user's.
        s.dataEnd = size;
        return;
      }
      if (prealloc !== 'falloc') await dropPreallocation(s);
      s.dataEnd = size;
    }
    try {
      await s.file.truncate(size, exact, prealloc, flags);
    } catch (e) {
      forgetEnds(s);
      throw e;
    }
    if (tracking(s)) s.dataEnd = s.zeroStart = s.fileEnd = size;
  },
};
