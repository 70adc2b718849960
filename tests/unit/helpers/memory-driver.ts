/**
 * Test doubles: `memory`, a protocol holding its bytes in a Uint8Array, and `memcow`, a tiny
 * copy-on-write format with a per-cluster allocation bitmap and a backing child, enough to test
 * the generic layer (copy-on-read, block status, permissions) without a real image format.
 */
import { BlkioError } from '../../../src/errors.js';
import type { BdrvChild } from '../../../src/block/child.js';
import { ROLE_IMAGE, type BlockDriver } from '../../../src/block/driver.js';
import { STATUS_DATA, STATUS_OFFSET_VALID, STATUS_ZERO } from '../../../src/block/flags.js';

export interface MemoryState {
  data: Uint8Array;
  writes: Array<{ offset: number; bytes: number; flags: number; zero: boolean }>;
}

/** Named memory disks shared across opens, so tests can look at what was written. */
export const memoryDisks = new Map<string, Uint8Array>();

export const memoryDriver: BlockDriver<MemoryState> = {
  name: 'memory',
  kind: 'protocol',
  options: { filename: { type: 'string' }, size: { type: 'size', default: 1 << 20 } },
  async open(node, ctx) {
    const name = (ctx.opts.filename as string | undefined) ?? node.nodeName;
    let data = memoryDisks.get(name);
    if (!data) memoryDisks.set(name, (data = new Uint8Array(ctx.opts.size as number)));
    node.filename = name;
    return { data, writes: [] };
  },
  getLength: (node) => node.state.data.length,
  async read(node, offset, bytes, buf) {
    buf.set(node.state.data.subarray(offset, offset + bytes));
  },
  async write(node, offset, bytes, buf, flags) {
    node.state.data.set(buf.subarray(0, bytes), offset);
    node.state.writes.push({ offset, bytes, flags, zero: false });
  },
  async writeZeroes(node, offset, bytes, flags) {
    node.state.data.fill(0, offset, offset + bytes);
    node.state.writes.push({ offset, bytes, flags, zero: true });
  },
};

export interface MemCowState {
  file: BdrvChild;
  clusterSize: number;
  allocated: Uint8Array;
  zero: Uint8Array;
  size: number;
}

/** A toy COW format: data lives at the same offset in `file`; clusters are allocated or not. */
export const memCowDriver: BlockDriver<MemCowState> = {
  name: 'memcow',
  kind: 'format',
  supportsBacking: true,
  options: { 'cluster-size': { type: 'size', default: 65536 }, backing_file: { type: 'string' } },
  async open(node, ctx) {
    const file = (await ctx.openChild('file', ROLE_IMAGE))!;
    const clusterSize = ctx.opts['cluster-size'] as number;
    const clusters = Math.ceil(file.getLength() / clusterSize);
    node.backingFile = (ctx.opts.backing_file as string | undefined) ?? '';
    return { file, clusterSize, allocated: new Uint8Array(clusters), zero: new Uint8Array(clusters), size: file.getLength() };
  },
  getLength: (node) => node.state.size,
  getInfo: (node) => ({ clusterSize: node.state.clusterSize }),
  async read(node, offset, bytes, buf) {
    const s = node.state;
    for (let pos = offset; pos < offset + bytes;) {
      const c = Math.floor(pos / s.clusterSize);
      const n = Math.min((c + 1) * s.clusterSize, offset + bytes) - pos;
      const out = buf.subarray(pos - offset, pos - offset + n);
      if (s.zero[c]) out.fill(0);
      else if (s.allocated[c]) await s.file.read(pos, n, out);
      else if (node.backing) await node.backing.read(pos, n, out);
      else out.fill(0);
      pos += n;
    }
  },
  async write(node, offset, bytes, buf) {
    const s = node.state;
    if (offset % s.clusterSize || bytes % s.clusterSize) {
      if (offset + bytes !== s.size) throw new BlkioError('EINVAL', 'memcow writes whole clusters');
    }
    await s.file.write(offset, bytes, buf);
    for (let c = offset / s.clusterSize; c * s.clusterSize < offset + bytes; c++) {
      s.allocated[c] = 1;
      s.zero[c] = 0;
    }
  },
  async writeZeroes(node, offset, bytes) {
    const s = node.state;
    for (let c = Math.floor(offset / s.clusterSize); c * s.clusterSize < offset + bytes; c++) s.zero[c] = 1;
  },
  async blockStatus(node, offset, bytes) {
    const s = node.state;
    const c = Math.floor(offset / s.clusterSize);
    const kind = (i: number) => (s.zero[i] ? 2 : s.allocated[i] ? 1 : 0);
    let end = (c + 1) * s.clusterSize;
    while (end < offset + bytes && kind(end / s.clusterSize) === kind(c)) end += s.clusterSize;
    const status = kind(c) === 2 ? STATUS_ZERO : kind(c) === 1 ? STATUS_DATA | STATUS_OFFSET_VALID : 0;
    return { status, pnum: Math.min(end, offset + bytes) - offset, map: offset, file: s.file.node };
  },
};
