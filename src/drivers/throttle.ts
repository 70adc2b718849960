/**
 * `throttle`: a filter that holds each request until its throttle group's budget allows it.
 * Reads count as reads; writes, zero writes and discards as writes; flushes are free. All
 * nodes naming the same group share one budget (src/block/throttle-group.ts).
 */
import { BlkioError } from '../errors.js';
import type { BdrvChild } from '../block/child.js';
import { ROLE_FILTER_CHILD, type BlockDriver, type ParsedOptions } from '../block/driver.js';
import type { BlockNode } from '../block/node.js';
import { REQ_WRITE_UNCHANGED } from '../block/flags.js';
import { supportedWriteFlags, supportedZeroFlags } from '../block/io.js';
import { findThrottleGroup } from '../block/objects.js';
import type { ThrottleGroup } from '../block/throttle-group.js';

interface ThrottleState {
  file: BdrvChild;
  group: ThrottleGroup;
}

function namedGroup(node: BlockNode, opts: ParsedOptions): ThrottleGroup {
  const name = opts['throttle-group'] as string | undefined;
  if (name === undefined) throw new BlkioError('EINVAL', 'Please specify a throttle group');
  const group = findThrottleGroup(node.layer, name);
  if (!group) throw new BlkioError('EINVAL', `Throttle group '${name}' does not exist`);
  return group;
}

export const throttleDriver: BlockDriver<ThrottleState> = {
  name: 'throttle',
  kind: 'filter',
  isFilter: true,
  options: { 'throttle-group': { type: 'string' } },

  async open(node, ctx) {
    const file = (await ctx.openChild('file', ROLE_FILTER_CHILD))!;
    const group = namedGroup(node, ctx.opts);
    group.join(node);
    return { file, group };
  },

  prepareReopen(node, opts) {
    const group = namedGroup(node, opts);
    return async () => {
      node.state.group.leave(node);
      node.state.group = group;
      group.join(node);
    };
  },

  async close(node) {
    node.state.group.leave(node);
  },

  supportedWriteFlags: (node) => supportedWriteFlags(node.state.file.node) | REQ_WRITE_UNCHANGED,
  supportedZeroFlags: (node) => supportedZeroFlags(node.state.file.node) | REQ_WRITE_UNCHANGED,

  getLength: (node) => node.state.file.getLength(),

  async read(node, offset, bytes, buf, flags) {
    await node.state.group.admit(node, false, bytes);
    return node.state.file.read(offset, bytes, buf, flags);
  },
  async write(node, offset, bytes, buf, flags) {
    await node.state.group.admit(node, true, bytes);
    return node.state.file.write(offset, bytes, buf, flags);
  },
  async writeZeroes(node, offset, bytes, flags) {
    await node.state.group.admit(node, true, bytes);
    return node.state.file.writeZeroes(offset, bytes, flags);
  },
  async writeCompressed(node, offset, bytes, buf) {
    await node.state.group.admit(node, true, bytes);
    return node.state.file.writeCompressed(offset, bytes, buf);
  },
  async discard(node, offset, bytes) {
    await node.state.group.admit(node, true, bytes);
    return node.state.file.discard(offset, bytes);
  },
  truncate: (node, size, exact, prealloc) => node.state.file.truncate(size, exact, prealloc),

  describeOptions: (node) => ({ 'throttle-group': node.state.group.id }),
};
