/**
 * `quorum`: N replicas (`children.0` ... `children.N-1`) voted over. A read goes to every
 * child (or, with `read-pattern=fifo`, to the first child that answers); when the successful
 * reads differ, the version with the most votes (SHA-256 of the data) wins if it has at least
 * `vote-threshold` votes, the losers are reported and, with `rewrite-corrupted`, overwritten
 * with the winner. Writes go to every child and succeed when `vote-threshold` children succeed.
 * With `blkverify`, any difference between the two children ends the program.
 *
 * QEMU sends its findings as QMP events; blkio hands them to `layer.emitEvent`, which prints
 * one JSON line each on stderr by default:
 *   {"event": "QUORUM_REPORT_BAD", "data": {"type": "read"|"write"|"flush", "error"?: "<strerror>",
 *     "node-name": "<child>", "sector-num": N, "sectors-count": N}}
 *   {"event": "QUORUM_FAILURE", "data": {"reference": "<quorum node>", "sector-num": N, "sectors-count": N}}
 * (members in QEMU's JSON output order; QEMU's `timestamp` member is left out).
 */
import { BlkioError, toBlkioError } from '../errors.js';
import type { BdrvChild } from '../block/child.js';
import { ROLE_DATA, type BlockDriver, type BlockStatusResult } from '../block/driver.js';
import type { BlockNode } from '../block/node.js';
import { REQ_FUA, REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQ_WRITE_UNCHANGED, STATUS_DATA, STATUS_ZERO } from '../block/flags.js';
import { blockStatusAbove, supportedZeroFlags } from '../block/io.js';
import { PERM_CONSISTENT_READ, PERM_PASSTHROUGH, PERM_WRITE, PERM_WRITE_UNCHANGED } from '../block/permissions.js';
import type { FlatOptions } from '../options/types.js';
import { firstDifference } from './blkverify.js';
import { lazyBuiltin } from '../lazy-builtin.js';

const crypto = lazyBuiltin<typeof import('node:crypto')>('node:crypto');

interface QuorumState {
  children: BdrvChild[];
  threshold: number;
  rewriteCorrupted: boolean;
  fifo: boolean;
  blkverify: boolean;
}

type Result = { ok: true } | { ok: false; error: BlkioError };

/** Versions of an answer (data hash or error code) with the children that gave each. */
interface Version {
  key: string;
  children: number[];
}

/**
 * Count votes: the version with the most votes wins, and of equal counts the one first seen
 * last (QEMU keeps its versions newest first and takes the first maximum).
 */
function winner(keys: Array<string | undefined>): Version {
  const versions: Version[] = [];
  keys.forEach((key, child) => {
    if (key === undefined) return;
    const v = versions.find((x) => x.key === key);
    if (v) v.children.push(child);
    else versions.unshift({ key, children: [child] });
  });
  return versions.reduce((best, v) => (v.children.length > best.children.length ? v : best));
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** How many `children.N` entries there are; QEMU's rules for a list given as flat keys. */
function countChildren(options: FlatOptions): number {
  const indices = Object.keys(options).filter((k) => k.startsWith('children.')).map((k) => k.slice(9).split('.')[0]);
  let count = 0;
  while (indices.includes(String(count))) count++;
  if (indices.some((i) => !/^(0|[1-9][0-9]*)$/.test(i) || Number(i) >= count)) {
    throw invalid('Option children is not a valid array');
  }
  return count;
}

function sectors(offset: number, bytes: number): { 'sector-num': number; 'sectors-count': number } {
  const start = Math.floor(offset / 512);
  return { 'sector-num': start, 'sectors-count': Math.ceil((offset + bytes) / 512) - start };
}

function reportBad(node: BlockNode<QuorumState>, type: 'read' | 'write' | 'flush', child: number, offset: number, bytes: number, error?: BlkioError): void {
  node.layer.emitEvent({
    event: 'QUORUM_REPORT_BAD',
    data: {
      type,
      ...(error ? { error: error.strerror } : {}),
      'node-name': node.state.children[child].node.nodeName,
      ...sectors(offset, bytes),
    },
  });
}

function reportFailure(node: BlockNode<QuorumState>, offset: number, bytes: number): void {
  node.layer.emitEvent({ event: 'QUORUM_FAILURE', data: { reference: node.nodeName, ...sectors(offset, bytes) } });
}

async function settle(request: Promise<void>): Promise<Result> {
  try {
    await request;
    return { ok: true };
  } catch (e) {
    return { ok: false, error: toBlkioError(e) };
  }
}

/**
 * Too few successes: report the failure and throw the error most children agree on.
 * Failed children were reported already.
 */
function checkSuccesses(node: BlockNode<QuorumState>, results: Result[], offset: number, bytes: number): void {
  if (results.filter((r) => r.ok).length >= node.state.threshold) return;
  const errors = results.map((r) => (r.ok ? undefined : r.error.code));
  const code = winner(errors).key;
  reportFailure(node, offset, bytes);
  throw results.find((r): r is { ok: false; error: BlkioError } => !r.ok && r.error.code === code)!.error;
}

/** Run a request on every child, reporting the children that fail. */
async function onAllChildren(
  node: BlockNode<QuorumState>, type: 'read' | 'write', offset: number, bytes: number,
  run: (child: BdrvChild, index: number) => Promise<void>,
): Promise<Result[]> {
  const results = await Promise.all(node.state.children.map((c, i) => settle(run(c, i))));
  results.forEach((r, i) => {
    if (!r.ok) reportBad(node, type, i, offset, bytes, r.error);
  });
  return results;
}

async function readFifo(node: BlockNode<QuorumState>, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  const children = node.state.children;
  for (let i = 0; ; i++) {
    const r = await settle(children[i].read(offset, bytes, buf));
    if (r.ok) return;
    reportBad(node, 'read', i, offset, bytes, r.error);
    if (i === children.length - 1) throw r.error;
  }
}

async function readQuorum(node: BlockNode<QuorumState>, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  const s = node.state;
  // The first child reads straight into the caller's buffer; the others need their own.
  const buffers = s.children.map((_, i) => (i === 0 ? buf.subarray(0, bytes) : new Uint8Array(bytes)));
  const results = await onAllChildren(node, 'read', offset, bytes, (child, i) => child.read(offset, bytes, buffers[i]));
  checkSuccesses(node, results, offset, bytes);

  const good = results.flatMap((r, i) => (r.ok ? [i] : []));
  const first = good[0];
  const disagreeing = good.find((i) => i !== first && Buffer.compare(buffers[i], buffers[first]) !== 0);
  if (disagreeing === undefined) {
    if (first !== 0) buf.set(buffers[first]);
    return;
  }
  if (s.blkverify) {
    const at = firstDifference(buffers[first], buffers[disagreeing]);
    node.layer.fatal(`quorum: offset=${offset} bytes=${bytes} contents mismatch at offset ${offset + at}`);
  }

  const hashes = results.map((r, i) => (r.ok ? crypto().createHash('sha256').update(buffers[i]).digest('hex') : undefined));
  const won = winner(hashes);
  if (won.children.length < s.threshold) {
    reportFailure(node, offset, bytes);
    throw new BlkioError('EIO');
  }
  const source = won.children[0];
  if (source !== 0) buf.set(buffers[source]);
  const losers = good.filter((i) => !won.children.includes(i));
  for (const i of losers) reportBad(node, 'read', i, offset, bytes);
  if (s.rewriteCorrupted) {
    // A repair changes the child's data, so it is a real write (no WRITE_UNCHANGED).
    await Promise.all(losers.map((i) => s.children[i].write(offset, bytes, buffers[source]).catch(() => {})));
  }
}

/**
 * Zeroes where every child reads zeroes (for the shortest such run), else data (for the longest
 * run of a child that does not: unallocated ranges of a protocol count as data); never a host
 * offset. A child that fails makes the range data, reported as a bad read.
 */
async function blockStatus(node: BlockNode<QuorumState>, offset: number, bytes: number): Promise<BlockStatusResult> {
  let dataBytes = 0;
  let zeroBytes = bytes;
  for (const [i, child] of node.state.children.entries()) {
    let r: BlockStatusResult;
    try {
      r = await blockStatusAbove(child.node, undefined, offset, bytes);
    } catch (e) {
      reportBad(node, 'read', i, offset, bytes, toBlkioError(e));
      dataBytes = bytes;
      break;
    }
    if (r.status & STATUS_ZERO) zeroBytes = Math.min(zeroBytes, r.pnum);
    else dataBytes = Math.max(dataBytes, r.pnum);
  }
  return dataBytes > 0 ? { status: STATUS_DATA, pnum: dataBytes } : { status: STATUS_ZERO, pnum: zeroBytes };
}

/**
 * Flush the children one after another; a failing child is reported. Enough successes make the
 * flush succeed, else it fails with the error most children gave (no QUORUM_FAILURE event).
 */
async function flushAll(node: BlockNode<QuorumState>): Promise<void> {
  const results: Result[] = [];
  for (const [i, child] of node.state.children.entries()) {
    const result = await settle(child.flush());
    if (!result.ok) reportBad(node, 'flush', i, 0, 0, result.error);
    results.push(result);
  }
  if (results.filter((r) => r.ok).length >= node.state.threshold) return;
  const errnos = results.map((r) => (r.ok ? undefined : String(r.error.errnoNumber)));
  throw (results[winner(errnos).children[0]!] as { ok: false; error: BlkioError }).error;
}

async function writeAll(node: BlockNode<QuorumState>, offset: number, bytes: number, run: (child: BdrvChild) => Promise<void>): Promise<void> {
  const results = await onAllChildren(node, 'write', offset, bytes, run);
  checkSuccesses(node, results, offset, bytes);
}

export const quorumDriver: BlockDriver<QuorumState> = {
  name: 'quorum',
  kind: 'filter',
  isFilter: true,
  cannotReopen: true,
  options: {
    'vote-threshold': { type: 'exact-number', default: 0 },
    'rewrite-corrupted': { type: 'bool', default: false },
    'read-pattern': { type: 'string' },
    blkverify: { type: 'bool', default: false },
  },

  async open(_node, ctx) {
    const count = countChildren(ctx.remaining);
    if (count < 1) throw invalid('Number of provided children must be 1 or more');
    // QEMU keeps the threshold in a C int: the uint64 wraps (-1 is below 1, 2^32 + 1 is 1).
    const threshold = Number(BigInt.asIntN(32, BigInt(ctx.opts['vote-threshold'] as bigint | number)));
    if (threshold < 1) throw invalid("Parameter 'vote-threshold' expects a value >= 1");
    if (threshold > count) throw invalid('threshold may not exceed children count');
    const pattern = ctx.opts['read-pattern'] as string | undefined;
    if (pattern !== undefined && pattern !== 'quorum' && pattern !== 'fifo') throw invalid('Please set read-pattern as fifo or quorum');
    const blkverify = ctx.opts.blkverify as boolean;
    if (blkverify && (count !== 2 || threshold !== 2)) {
      throw invalid('blkverify=on can only be set if there are exactly two files and vote-threshold is 2');
    }
    const rewriteCorrupted = ctx.opts['rewrite-corrupted'] as boolean;
    if (rewriteCorrupted && blkverify) throw invalid('rewrite-corrupted=on cannot be used with blkverify=on');

    const children: BdrvChild[] = [];
    for (let i = 0; i < count; i++) children.push((await ctx.openChild(`children.${i}`, ROLE_DATA))!);
    const length = children[0].getLength();
    if (children.some((c) => c.getLength() !== length)) {
      throw new BlkioError('EIO', 'Could not refresh total sector count: Input/output error');
    }
    return { children, threshold, rewriteCorrupted, fifo: pattern === 'fifo', blkverify };
  },

  /** Replicas must stay identical: nobody else may write to or resize them. */
  childPerm: (node, _child, parents) => ({
    perm: (parents.perm & PERM_PASSTHROUGH) | (node.state.rewriteCorrupted ? PERM_WRITE : 0),
    shared: parents.shared & (PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED),
  }),

  supportedWriteFlags: () => REQ_WRITE_UNCHANGED,
  supportedZeroFlags: (node) =>
    REQ_WRITE_UNCHANGED |
    node.state.children.reduce((flags, c) => flags & supportedZeroFlags(c.node), REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK),

  getLength: (node) => node.state.children[0].getLength(),

  read(node, offset, bytes, buf) {
    return node.state.fifo ? readFifo(node, offset, bytes, buf) : readQuorum(node, offset, bytes, buf);
  },
  write: (node, offset, bytes, buf, flags) => writeAll(node, offset, bytes, (c) => c.write(offset, bytes, buf, flags)),
  writeZeroes: (node, offset, bytes, flags) => writeAll(node, offset, bytes, (c) => c.writeZeroes(offset, bytes, flags)),
  flushAll,
  blockStatus,
};
