/**
 * `raw`: the data as is. With `offset`/`size` it is a window into its file; without them it acts
 * as a filter (so it forwards WRITE_UNCHANGED and takes write permissions only when asked).
 */
import { BlkioError, errno } from '../errors.js';
import { ROLE_FILTER_CHILD, ROLE_IMAGE, type BlockDriver, type CreateRequest } from '../block/driver.js';
import type { BdrvChild } from '../block/child.js';
import {
  REQ_FUA, REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQ_WRITE_UNCHANGED, STATUS_OFFSET_VALID, STATUS_RAW,
} from '../block/flags.js';
import { defaultChildPerms, PERM_RESIZE, PERM_WRITE } from '../block/permissions.js';
import { debugEvent, nodeInfo, supportedWriteFlags, supportedZeroFlags } from '../block/io.js';
import { limitsFrom, type BlockNode } from '../block/node.js';

const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'];
/** What a probed image's writes are checked against: the first sector. */
const PROBE_SECTOR = 512;
const INT64_MAX = 2n ** 63n - 1n;

interface RawState {
  file: BdrvChild;
  offset: number;
  /** Fixed size of the window, or undefined to follow the file. */
  size: number | undefined;
}

/** A create option `preallocation` QEMU's PreallocMode knows (formats that hand it to their file, as raw and luks). */
export function checkPreallocationOption(options: CreateRequest['options']): void {
  const prealloc = String(options.preallocation ?? 'off');
  if (!PREALLOC_MODES.includes(prealloc)) throw new BlkioError('EINVAL', `invalid parameter value: ${prealloc}`);
}

/** A writable raw node whose format was probed warns that block 0 is restricted (at each open, as in QEMU). */
function warnIfProbedWritable(node: BlockNode, file: BdrvChild): void {
  if (!node.probed || node.readOnly) return;
  node.layer.warn(`WARNING: Image format was not specified for '${file.node.filename}' and probing guessed raw.\n` +
    '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
    "         Specify the 'raw' format explicitly to remove the restrictions.");
}

function window(s: RawState, offset: number, bytes: number, isWrite: boolean): number {
  if (s.size !== undefined && offset > s.size - bytes) throw errno(isWrite ? 'ENOSPC' : 'EINVAL');
  return s.offset + offset;
}

/** offset and size (exact, as given) checked against the file's length, as numbers. */
function checkedWindow(offset: bigint, size: bigint | undefined, real: number): Pick<RawState, 'offset' | 'size'> {
  if (offset > BigInt(real)) {
    throw new BlkioError('EINVAL', `Offset (${offset}) cannot be greater than size of the containing file (${real})`);
  }
  if (size !== undefined && BigInt(real) - offset < size) {
    throw new BlkioError('EINVAL', `The sum of offset (${offset}) and size (${size}) has to be smaller or equal to the  actual size of the containing file (${real})`);
  }
  if (size !== undefined && size % 512n !== 0n) throw new BlkioError('EINVAL', 'Specified size is not multiple of 512');
  return { offset: Number(offset), size: size === undefined ? undefined : Number(size) };
}

export const rawDriver: BlockDriver<RawState> = {
  name: 'raw',
  kind: 'format',
  options: {
    offset: { type: 'exact-size' },
    size: { type: 'exact-size' },
  },

  probe: () => 1,

  createOptions: [{ name: 'size', type: 'size', help: 'Virtual disk size' }],

  checkCreateOptions: (request) => checkPreallocationOption(request.options),

  /** Creation passes straight to the protocol: the file gets the size, preallocated as asked. */
  create: (file, request) => file.create(request),

  /** Every guest byte is a byte of the file, allocated or not. */
  async measure(options, source) {
    const required = source ? source.node.getLength() : Math.ceil(Number(options.size ?? 0) / 512) * 512;
    return { required, fullyAllocated: required };
  },

  async open(node, ctx) {
    const offset = (ctx.opts.offset as bigint | undefined) ?? 0n;
    const size = ctx.opts.size as bigint | undefined;
    // QEMU picks the role by a non-zero offset, not by whether one was given.
    const role = offset === 0n && size === undefined ? ROLE_FILTER_CHILD : ROLE_IMAGE;
    const file = (await ctx.openChild('file', role))!;
    const window = checkedWindow(offset, size, file.getLength());
    warnIfProbedWritable(node, file);
    return { file, ...window };
  },

  warnAgainAfterSnapshotGoto(node) {
    warnIfProbedWritable(node, node.state.file);
  },

  prepareReopen(node, opts) {
    const window = checkedWindow((opts.offset as bigint | undefined) ?? 0n, opts.size as bigint | undefined, node.state.file.getLength());
    return async () => {
      Object.assign(node.state, window);
    };
  },

  refreshLimits(node) {
    node.limits = limitsFrom(node.state.file.node);
    // A probed image is written in whole first sectors, so that each can be checked (write()).
    if (node.probed) node.limits.requestAlignment = PROBE_SECTOR;
  },

  childPerm(node, child, parents) {
    const p = defaultChildPerms(node, child, parents);
    // Storage defaults add write and resize; raw needs them only when its users do.
    p.perm = (p.perm & ~(PERM_WRITE | PERM_RESIZE)) | (parents.perm & (PERM_WRITE | PERM_RESIZE));
    return p;
  },

  supportedWriteFlags: (node) => REQ_WRITE_UNCHANGED | (supportedWriteFlags(node.state.file.node) & REQ_FUA),
  supportedZeroFlags: (node) =>
    REQ_WRITE_UNCHANGED | (supportedZeroFlags(node.state.file.node) & (REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK)),

  getLength: (node) => node.state.size ?? node.state.file.getLength() - node.state.offset,

  async read(node, offset, bytes, buf, flags) {
    await debugEvent(node.state.file.node, 'read_aio');
    return node.state.file.read(window(node.state, offset, bytes, false), bytes, buf, flags);
  },
  async write(node, offset, bytes, buf, flags) {
    // Data that would make a probed image probe as another format next time is refused.
    if (node.probed && offset < PROBE_SECTOR && bytes > 0 && node.layer.probeHeader(buf.subarray(0, PROBE_SECTOR), node.filename) !== 'raw') {
      throw errno('EPERM');
    }
    await debugEvent(node.state.file.node, 'write_aio');
    return node.state.file.write(window(node.state, offset, bytes, true), bytes, buf, flags);
  },
  writeZeroes: (node, offset, bytes, flags) => node.state.file.writeZeroes(window(node.state, offset, bytes, true), bytes, flags),
  discard: (node, offset, bytes) => node.state.file.discard(window(node.state, offset, bytes, true), bytes),

  async truncate(node, size, exact, prealloc) {
    const s = node.state;
    if (s.size !== undefined) throw new BlkioError('ENOTSUP', 'Cannot resize fixed-size raw disks');
    if (BigInt(size) + BigInt(s.offset) > INT64_MAX) throw new BlkioError('EINVAL', 'Disk size too large for the chosen offset');
    await s.file.truncate(s.offset + size, exact, prealloc);
  },

  async blockStatus(node, offset, bytes) {
    return { status: STATUS_RAW | STATUS_OFFSET_VALID, pnum: bytes, map: node.state.offset + offset, file: node.state.file.node };
  },

  /** raw has no information of its own: its file's, looking through filters (none at all when that has none, as null-co). */
  getInfo(node) {
    let file = node.state.file.node;
    while (!file.driver.getInfo && file.filteredChild) file = file.filteredChild.node;
    if (!file.driver.getInfo) throw errno('ENOTSUP');
    // Being encrypted is a node's own property (bs->encrypted): raw over LUKS is not.
    return { ...nodeInfo(file), encrypted: false };
  },

  describeOptions: (node) => ({
    ...(node.state.offset || node.state.size !== undefined ? { offset: node.state.offset } : {}),
    ...(node.state.size !== undefined ? { size: node.state.size } : {}),
  }),
};
