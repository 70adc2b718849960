/**
 * `blkverify`: runs every request on two images, the image under test (`test`) and a raw
 * reference copy (`raw`), and ends the program when they disagree: different outcomes, or
 * different data read. Writes and zero writes go to both; discards are not supported (as in
 * QEMU, which then does nothing). The node's length is `test`'s.
 *
 * Filename syntax: `blkverify:<raw image>:<test image>`.
 */
import { BlkioError } from '../errors.js';
import type { BdrvChild } from '../block/child.js';
import { ROLE_DATA, ROLE_FILTER_CHILD, type BlockDriver } from '../block/driver.js';
import type { BlockNode } from '../block/node.js';
import { REQ_WRITE_UNCHANGED } from '../block/flags.js';

interface BlkverifyState {
  test: BdrvChild;
  raw: BdrvChild;
}

type Outcome = { ok: true } | { ok: false; error: unknown };

async function outcome(request: Promise<void>): Promise<Outcome> {
  try {
    await request;
    return { ok: true };
  } catch (error) {
    return { ok: false, error };
  }
}

/** A return value as QEMU compares them: 0 for success, else the negative errno. */
function returnValue(o: Outcome): number {
  if (o.ok) return 0;
  return -(o.error instanceof BlkioError ? o.error.errnoNumber : 5);
}

function fail(node: BlockNode, kind: 'read' | 'write', offset: number, bytes: number, what: string): never {
  return node.layer.fatal(`blkverify: ${kind} offset=${offset} bytes=${bytes} ${what}`);
}

/** Run the same request on both children; identical outcomes or the program ends. */
async function both(
  node: BlockNode<BlkverifyState>, kind: 'read' | 'write', offset: number, bytes: number,
  run: (child: BdrvChild) => Promise<void>,
): Promise<void> {
  const [test, raw] = await Promise.all([outcome(run(node.state.test)), outcome(run(node.state.raw))]);
  if (returnValue(test) !== returnValue(raw)) {
    fail(node, kind, offset, bytes, `return value mismatch ${returnValue(test)} != ${returnValue(raw)}`);
  }
  if (!test.ok) throw test.error;
}

/** Index of the first byte where two equally long buffers differ, or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (Buffer.compare(a, b) === 0) return -1;
  // Narrow down by halves with native compares instead of a byte loop.
  let lo = 0;
  let hi = a.length;
  while (hi - lo > 1) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (Buffer.compare(a.subarray(lo, mid), b.subarray(lo, mid)) !== 0) hi = mid;
    else lo = mid;
  }
  return lo;
}

export const blkverifyDriver: BlockDriver<BlkverifyState> = {
  name: 'blkverify',
  kind: 'protocol',
  isFilter: true,
  cannotReopen: true,
  protocolPrefix: 'blkverify',
  options: { 'x-raw': { type: 'string' }, 'x-image': { type: 'string' } },

  parseFilename(filename, options) {
    const rest = filename.startsWith('blkverify:') ? filename.slice('blkverify:'.length) : '';
    const colon = rest.indexOf(':');
    if (colon < 0) throw new BlkioError('EINVAL', 'blkverify requires raw copy and original image path');
    options['x-raw'] = rest.slice(0, colon);
    options['x-image'] = rest.slice(colon + 1);
  },

  async open(_node, ctx) {
    const raw = (await ctx.openChild('raw', ROLE_FILTER_CHILD, { filename: ctx.opts['x-raw'] as string | undefined }))!;
    const test = (await ctx.openChild('test', ROLE_DATA, { filename: ctx.opts['x-image'] as string | undefined }))!;
    return { test, raw };
  },

  // Only the image under test matters: the raw copy is never flushed.
  flushAll: (node) => node.state.test.flush(),

  supportedWriteFlags: () => REQ_WRITE_UNCHANGED,
  supportedZeroFlags: () => REQ_WRITE_UNCHANGED,

  getLength: (node) => node.state.test.getLength(),

  async read(node, offset, bytes, buf, flags) {
    const reference = new Uint8Array(bytes);
    await both(node, 'read', offset, bytes, (child) =>
      child === node.state.test ? child.read(offset, bytes, buf, flags) : child.read(offset, bytes, reference, flags));
    const at = firstDifference(buf.subarray(0, bytes), reference);
    if (at >= 0) fail(node, 'read', offset, bytes, `contents mismatch at offset ${offset + at}`);
  },
  write: (node, offset, bytes, buf, flags) =>
    both(node, 'write', offset, bytes, (child) => child.write(offset, bytes, buf, flags)),
  writeZeroes: (node, offset, bytes, flags) =>
    both(node, 'write', offset, bytes, (child) => child.writeZeroes(offset, bytes, flags)),
};
