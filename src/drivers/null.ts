/** `null-co` and `null-aio`: a device of a given size that discards writes and (optionally) reads zeroes. */
import { BlkioError } from '../errors.js';
import type { BlockDriver } from '../block/driver.js';
import { REQ_FUA, STATUS_OFFSET_VALID, STATUS_ZERO } from '../block/flags.js';
import { MAX_NODE_LENGTH } from '../block/io.js';

interface NullState {
  size: number;
  latencyMs: number;
  readZeroes: boolean;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function nullDriver(name: 'null-co' | 'null-aio'): BlockDriver<NullState> {
  const delay = (s: NullState) => (s.latencyMs > 0 ? sleep(s.latencyMs) : Promise.resolve());
  return {
    name,
    kind: 'protocol',
    protocolPrefix: name,
    options: {
      size: { type: 'exact-size', default: 1 << 30 },
      'latency-ns': { type: 'exact-number', default: 0 },
      'read-zeroes': { type: 'bool', default: false },
    },
    parseFilename(filename) {
      if (filename !== `${name}://`) {
        throw new BlkioError('EINVAL', `The only allowed filename for this driver is '${name}://'`);
      }
    },
    async open(node, ctx) {
      const latency = BigInt(ctx.opts['latency-ns'] as bigint | number);
      // QEMU reads the number as int64: values from 2^63 up are negative there.
      if (latency >= 2n ** 63n) throw new BlkioError('EINVAL', 'latency-ns is invalid');
      // QEMU 7.2 turns a length from 2^63 up into an errno (or length 0) by truncating the
      // negative int64 to an int; blkio refuses every size beyond the limit the same way.
      const size = BigInt(ctx.opts.size as bigint | number);
      if (size > BigInt(MAX_NODE_LENGTH)) throw new BlkioError('EFBIG', 'Could not refresh total sector count: File too large');
      node.filename = `${name}://`;
      return { size: Number(size), latencyMs: Number(latency) / 1e6, readZeroes: ctx.opts['read-zeroes'] as boolean };
    },
    getLength: (node) => node.state.size,
    // Nothing is stored anywhere: `disk size: 0 B`, as QEMU reports it.
    allocatedSize: () => Promise.resolve(0),
    supportedWriteFlags: () => REQ_FUA,
    async read(node, _offset, bytes, buf) {
      await delay(node.state);
      if (node.state.readZeroes) buf.fill(0, 0, bytes);
    },
    write: (node) => delay(node.state),
    writeZeroes: (node) => delay(node.state),
    flushToDisk: (node) => delay(node.state),
    async blockStatus(node, offset, bytes) {
      const status = STATUS_OFFSET_VALID | (node.state.readZeroes ? STATUS_ZERO : 0);
      return { status, pnum: bytes, map: offset, file: node };
    },
    describeOptions: (node) => ({ size: node.state.size, 'read-zeroes': node.state.readZeroes }),
  };
}

export const nullCoDriver = nullDriver('null-co');
export const nullAioDriver = nullDriver('null-aio');
