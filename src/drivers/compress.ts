/**
 * `compress`: a filter that turns every write into a compressed write on its child. Requests
 * are aligned to the child's cluster size, so the generic layer pads partial clusters by
 * read-modify-write; compressed writes of their own are not supported (`write -c` fails).
 */
import { BlkioError } from '../errors.js';
import type { BdrvChild } from '../block/child.js';
import { ROLE_FILTER_CHILD, type BlockDriver } from '../block/driver.js';
import { REQ_FUA, REQ_MAY_UNMAP, REQ_WRITE_UNCHANGED } from '../block/flags.js';
import { nodeInfoIfAny, supportedWriteFlags, supportedZeroFlags } from '../block/io.js';

interface CompressState {
  file: BdrvChild;
}

export const compressDriver: BlockDriver<CompressState> = {
  name: 'compress',
  kind: 'filter',
  isFilter: true,
  options: {},
  cannotReopen: true,

  async open(_node, ctx) {
    const file = (await ctx.openChild('file', ROLE_FILTER_CHILD))!;
    if (!file.node.driver.writeCompressed) {
      throw new BlkioError('ENOTSUP', `Compression is not supported for underlying format: ${file.node.driver.name}`);
    }
    return { file };
  },

  refreshLimits(node) {
    const clusterSize = nodeInfoIfAny(node.state.file.node)?.clusterSize;
    if (clusterSize) node.limits.requestAlignment = clusterSize;
  },

  supportedWriteFlags: (node) => REQ_WRITE_UNCHANGED | (supportedWriteFlags(node.state.file.node) & REQ_FUA),
  supportedZeroFlags: (node) =>
    REQ_WRITE_UNCHANGED | (supportedZeroFlags(node.state.file.node) & (REQ_FUA | REQ_MAY_UNMAP)),

  getLength: (node) => node.state.file.getLength(),

  read: (node, offset, bytes, buf, flags) => node.state.file.read(offset, bytes, buf, flags),
  write: (node, offset, bytes, buf) => node.state.file.writeCompressed(offset, bytes, buf),
  writeZeroes: (node, offset, bytes, flags) => node.state.file.writeZeroes(offset, bytes, flags),
  discard: (node, offset, bytes) => node.state.file.discard(offset, bytes),
  truncate: (node, size, exact, prealloc) => node.state.file.truncate(size, exact, prealloc),
};
