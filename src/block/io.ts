/**
 * The request path every read and write takes through an edge: permission checks, request
 * flags (emulated or stripped per driver), alignment with read-modify-write, serialisation of
 * overlapping requests, zero writes, FUA, and copy-on-read. Drivers never see what they did not
 * declare they support.
 */
import { BlkioError, errno } from '../errors.js';
import { roundDown, roundUp } from '../arithmetic.js';
import type { BdrvChild } from './child.js';
import type { BlockStatusResult, DriverInfo, StatusList } from './driver.js';
import type { BlockLimits, BlockNode, TrackedRequest } from './node.js';
import { markDirty } from './dirty-bitmap.js';
import { PERM_RESIZE, PERM_WRITE, PERM_WRITE_UNCHANGED, permNames } from './permissions.js';
import {
  MAX_BOUNCE_BUFFER, REQUEST_MAX_BYTES, REQ_COPY_ON_READ, REQ_FUA, REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQ_PREFETCH,
  REQ_SERIALISING, REQ_WRITE_UNCHANGED, REQ_ZERO_WRITE, STATUS_ALLOCATED, STATUS_DATA, STATUS_EOF,
  STATUS_OFFSET_VALID, STATUS_RAW, STATUS_RECURSE, STATUS_ZERO,
} from './flags.js';

// ---------------------------------------------------------------------------------------------
// Permissions

function requirePerm(child: BdrvChild, needed: number, acceptable: number, what: string): void {
  if (child.perm & acceptable) return;
  const held = child.perm ? `'${permNames(child.perm)}'` : 'no permissions';
  throw new BlkioError(
    'EPERM',
    `${capitalize(child.parent.describe())} may not ${what} node '${child.node.nodeName}' ` +
      `(its '${child.name}' child) without '${permNames(needed)}' permission; it holds ${held}`,
  );
}

function capitalize(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/** A write needs WRITE, or WRITE_UNCHANGED when the request promises not to change the data. */
function checkWritePerm(child: BdrvChild, flags: number): void {
  if (flags & REQ_WRITE_UNCHANGED) {
    requirePerm(child, PERM_WRITE_UNCHANGED, PERM_WRITE | PERM_WRITE_UNCHANGED, 'write unchanged data to');
  } else {
    requirePerm(child, PERM_WRITE, PERM_WRITE, 'write to');
  }
}

// ---------------------------------------------------------------------------------------------
// Serialisation of overlapping requests

/**
 * Track a request on [start, end) of `node` once no request it must not overlap is in flight;
 * returns the function that ends it. Without a conflict (nearly always) it starts at once,
 * without a promise: this runs for every request on every node.
 */
function beginRequest(node: BlockNode, start: number, end: number, serialising: boolean): (() => void) | Promise<() => void> {
  const conflict = conflictingRequest(node, start, end, serialising);
  if (conflict) return requestDone(conflict).then(() => beginRequest(node, start, end, serialising));
  const req: TrackedRequest = { start, end, serialising, done: undefined, resolveDone: undefined };
  node.tracked.add(req);
  return () => {
    node.tracked.delete(req);
    req.resolveDone?.();
  };
}

function conflictingRequest(node: BlockNode, start: number, end: number, serialising: boolean): TrackedRequest | undefined {
  for (const other of node.tracked) {
    if ((other.serialising || serialising) && other.start < end && start < other.end) return other;
  }
  return undefined;
}

/** Resolves when the tracked request `req` ends. */
export function requestDone(req: TrackedRequest): Promise<void> {
  req.done ??= new Promise<void>((resolve) => (req.resolveDone = resolve));
  return req.done;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

const ZERO_CHUNK = Buffer.alloc(1 << 20);

/**
 * Whether every byte of buf[start, end) is zero: native comparison against a zero chunk, no
 * per-byte loop and no views allocated (callers test many small ranges, e.g. every sector).
 */
export function isZeroBuffer(buf: Uint8Array, start = 0, end = buf.length): boolean {
  // Data usually shows in its first byte: that answer costs no native call.
  if (start < end && buf[start] !== 0) return false;
  for (let pos = start; pos < end; pos += ZERO_CHUNK.length) {
    const n = Math.min(ZERO_CHUNK.length, end - pos);
    if (ZERO_CHUNK.compare(buf, pos, pos + n, 0, n) !== 0) return false;
  }
  return true;
}

/** QEMU's BDRV_MAX_LENGTH, the longest node: INT64_MAX rounded down to its largest alignment (1 GiB). */
export const MAX_NODE_LENGTH = 2 ** 63 - 2 ** 30;

function checkRange(offset: number, bytes: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset < 0 || bytes < 0) {
    throw errno('EIO');
  }
}

/**
 * QEMU's bdrv_check_request32, on every edge: a request with a buffer (a driver's metadata
 * read too) ends before the longest node and is at most REQUEST_MAX_BYTES long.
 */
function checkBufferRequest(offset: number, bytes: number): void {
  if (!(offset >= 0 && bytes >= 0 && bytes <= REQUEST_MAX_BYTES && offset + bytes <= MAX_NODE_LENGTH)) throw errno('EIO');
}

const INT_MAX = 2 ** 31 - 1;

/**
 * The most one driver call moves, as bdrv_aligned_preadv/pwritev split a padded request: below
 * 2 GiB in whole alignment units (Node's file reads and writes take no more than INT_MAX either).
 */
function driverMaxTransfer(node: BlockNode): number {
  return Math.min(node.limits.maxTransfer || INT_MAX, roundDown(INT_MAX, node.limits.requestAlignment));
}

/** Cluster and subcluster size, from the node or the child a filter passes through to ({} if unknown). */
export function nodeInfo(node: BlockNode): DriverInfo {
  return nodeInfoIfAny(node) ?? {};
}

/** bdrv_get_info: undefined when no driver on the way has information (ENOTSUP: raw over null-co). */
export function nodeInfoIfAny(node: BlockNode): DriverInfo | undefined {
  for (let n: BlockNode | undefined = node; n; n = n.filteredChild?.node) {
    if (n.driver.getInfo) {
      try {
        return n.driver.getInfo(n);
      } catch {
        return undefined;
      }
    }
    if (!n.isFilter) break;
  }
  return undefined;
}

/** Fire a debug event; await it to let a blkdebug breakpoint suspend the request that fired it. */
export function debugEvent(node: BlockNode | undefined, event: string): void | Promise<void> {
  // Not async: the metadata paths fire events per lookup, and most nodes have no handler.
  return node?.driver.debugEvent?.(node, event);
}

/**
 * Whether the node's driver handles debug events (blkdebug). The request paths ask first and,
 * without a handler, raise none: no awaits and no closures for events nobody takes.
 */
function takesDebugEvents(node: BlockNode | undefined): boolean {
  return node?.driver.debugEvent !== undefined;
}

// ---------------------------------------------------------------------------------------------
// Reads

export async function childRead(child: BdrvChild, offset: number, bytes: number, buf: Uint8Array, flags: number): Promise<void> {
  checkBufferRequest(offset, bytes);
  const node = child.node;
  const align = node.limits.requestAlignment;
  if (bytes === 0) {
    // An empty read at an aligned offset reaches the driver, as in QEMU: filters pass it on,
    // blkdebug may fail it, and copy-on-read copies the cluster around the offset.
    if (offset % align !== 0 || !Number.isSafeInteger(offset)) return;
  } else if (offset >= node.getLength()) {
    // Past the end there are only zeros, also at offsets beyond 2^53 (corrupt qcow2 entries
    // reach 2^56; QEMU's limit is just below 2^63).
    buf.fill(0, 0, bytes);
    return;
  }
  checkRange(offset, bytes);
  if (flags & REQ_COPY_ON_READ) {
    requirePerm(child, PERM_WRITE_UNCHANGED, PERM_WRITE | PERM_WRITE_UNCHANGED, 'copy on read into');
  }
  const start = roundDown(offset, align);
  const end = roundUp(offset + bytes, align);
  if (start === offset && end === offset + bytes) {
    return alignedRead(node, offset, bytes, buf, flags);
  }
  const bounce = new Uint8Array(end - start);
  // QEMU pads around the caller's own buffer, so a driver that leaves data untouched (null-co)
  // leaves the caller's bytes: start the bounce buffer with them.
  bounce.set(buf.subarray(0, bytes), offset - start);
  await alignedRead(node, start, end - start, bounce, flags);
  buf.set(bounce.subarray(offset - start, offset - start + bytes));
}

async function alignedRead(node: BlockNode, offset: number, bytes: number, buf: Uint8Array, flags: number): Promise<void> {
  if (flags & REQ_COPY_ON_READ) {
    const granularity = nodeInfo(node).clusterSize ?? node.limits.requestAlignment;
    const finish = await beginRequest(node, roundDown(offset, granularity), roundUp(offset + bytes, granularity), true);
    try {
      // Nothing counts as allocated for an empty read (QEMU's block status of 0 bytes).
      const { allocated, pnum } = bytes > 0 ? await isAllocated(node, offset, bytes) : { allocated: false, pnum: 0 };
      if (allocated && pnum >= bytes) {
        if (!(flags & REQ_PREFETCH)) await driverRead(node, offset, bytes, buf, flags & ~REQ_COPY_ON_READ);
      } else {
        await copyOnRead(node, offset, bytes, buf, flags & ~REQ_COPY_ON_READ);
      }
    } finally {
      finish();
    }
    return;
  }
  const finish = await beginRequest(node, offset, offset + bytes, false);
  try {
    await driverRead(node, offset, bytes, buf, flags);
  } finally {
    finish();
  }
}

/** Call the driver, splitting by max transfer and reading zeroes past the end of the node. */
async function driverRead(node: BlockNode, offset: number, bytes: number, buf: Uint8Array, flags: number): Promise<void> {
  const read = node.driver.read;
  if (!read) throw errno('ENOTSUP');
  flags &= node.driver.supportedReadFlags?.(node) ?? 0;
  if (bytes === 0) return read.call(node.driver, node, offset, 0, buf, flags);
  const length = node.getLength();
  const readable = Math.max(0, Math.min(bytes, roundUp(length, node.limits.requestAlignment) - offset));
  if (readable < bytes) buf.fill(0, readable, bytes);
  const max = driverMaxTransfer(node);
  for (let done = 0; done < readable; done += max) {
    const n = Math.min(max, readable - done);
    await read.call(node.driver, node, offset + done, n, buf.subarray(done, done + n), flags);
  }
}

/**
 * How far copy-on-read widens a request: to whole clusters, as QEMU 7.2 does (with subclusters,
 * the unallocated subclusters of the whole cluster get copied). Where QEMU 7.2 then fails an
 * assertion (the first allocation run of the cluster ends before the request starts, or a run
 * starts after its end), the request is widened to subclusters only, as QEMU 8.1 does.
 */
async function copyOnReadGranularity(node: BlockNode, offset: number, bytes: number, maxTransfer: number): Promise<number> {
  const info = nodeInfo(node);
  const cluster = info.clusterSize ?? node.limits.requestAlignment;
  const subcluster = info.subclusterSize ?? cluster;
  if (subcluster === cluster) return cluster;
  const clusterStart = roundDown(offset, cluster);
  const clusterEnd = roundUp(offset + bytes, cluster);
  for (let pos = clusterStart; pos < clusterEnd;) {
    const want = Math.min(clusterEnd - pos, maxTransfer);
    // A failed query counts as unallocated, as in the copy itself.
    const run = await isAllocated(node, pos, want).catch(() => ({ allocated: false, pnum: want }));
    if (run.pnum === 0) break;
    if (pos === clusterStart && run.pnum <= offset - clusterStart) return subcluster;
    if (pos > offset + bytes) return subcluster;
    pos += run.pnum;
  }
  return cluster;
}

/**
 * The generic copy-on-read routine: widen the request to (sub)cluster boundaries, and copy each
 * unallocated part into this node with an unchanged-data write (a zero write when the data is
 * all zero), then hand the caller its bytes.
 */
async function copyOnRead(node: BlockNode, offset: number, bytes: number, buf: Uint8Array, flags: number): Promise<void> {
  const maxTransfer = Math.min(node.limits.maxTransfer || MAX_BOUNCE_BUFFER, MAX_BOUNCE_BUFFER);
  const granularity = await copyOnReadGranularity(node, offset, bytes, maxTransfer);
  const alignedStart = roundDown(offset, granularity);
  const alignedEnd = roundUp(offset + bytes, granularity);
  const prefetch = (flags & REQ_PREFETCH) !== 0;
  let bounce: Uint8Array | undefined;

  for (let pos = alignedStart; pos < alignedEnd;) {
    const want = Math.min(alignedEnd - pos, maxTransfer);
    let status: { allocated: boolean; pnum: number };
    try {
      status = await isAllocated(node, pos, want);
    } catch {
      status = { allocated: false, pnum: want };
    }
    let pnum = Math.min(status.pnum, want);
    if (pnum === 0) break; // end of image inside the last cluster: the request is already covered
    const overlapStart = Math.max(pos, offset);
    const overlapEnd = Math.min(pos + pnum, offset + bytes);
    if (!status.allocated) {
      pnum = Math.min(pnum, MAX_BOUNCE_BUFFER);
      bounce ??= new Uint8Array(Math.min(Math.max(pnum, alignedEnd - alignedStart - pnum), maxTransfer));
      const chunk = bounce.subarray(0, pnum);
      await driverRead(node, pos, pnum, chunk, flags & ~REQ_PREFETCH);
      await debugEvent(node, 'cor_write');
      if (node.driver.writeZeroes && isZeroBuffer(chunk)) {
        await driverZeroes(node, pos, pnum, REQ_WRITE_UNCHANGED);
      } else {
        await driverWrite(node, pos, pnum, chunk, REQ_WRITE_UNCHANGED);
      }
      if (!prefetch && overlapEnd > overlapStart) {
        buf.set(chunk.subarray(overlapStart - pos, overlapEnd - pos), overlapStart - offset);
      }
    } else if (!prefetch && overlapEnd > overlapStart) {
      await driverRead(node, overlapStart, overlapEnd - overlapStart, buf.subarray(overlapStart - offset, overlapEnd - offset), flags);
    }
    pos += pnum;
  }
}

// ---------------------------------------------------------------------------------------------
// Writes

export async function childWrite(child: BdrvChild, offset: number, bytes: number, buf: Uint8Array | null, flags: number): Promise<void> {
  // Zero writes carry no buffer: QEMU holds them to the node length only.
  if (!(flags & REQ_ZERO_WRITE)) checkBufferRequest(offset, bytes);
  // Corrupt qcow2 entries reach 2^56: QEMU passes such writes down and the file system refuses
  // them (no Linux file grows beyond 2^53, the last position Node can express).
  if (Number.isInteger(offset) && offset >= 0 && offset + bytes <= MAX_NODE_LENGTH && !Number.isSafeInteger(offset + bytes)) {
    throw new BlkioError('EFBIG');
  }
  checkRange(offset, bytes);
  checkWritePerm(child, flags);
  const node = child.node;
  // An empty data write at an aligned offset reaches the driver, as in QEMU (blkdebug may fail
  // it); an empty zero write does nothing.
  if (bytes === 0 && (flags & REQ_ZERO_WRITE || offset % node.limits.requestAlignment !== 0)) return;
  if (offset + bytes > node.getLength() && !(child.perm & PERM_RESIZE)) throw errno('EIO');
  if (!(flags & REQ_ZERO_WRITE) && buf && node.detectZeroes !== 'off' && isZeroBuffer(buf.subarray(0, bytes))) {
    flags |= REQ_ZERO_WRITE;
    if (node.detectZeroes === 'unmap') flags |= REQ_MAY_UNMAP;
  }
  if (!node.discardUnmap) flags &= ~REQ_MAY_UNMAP;

  const align = node.limits.requestAlignment;
  const start = roundDown(offset, align);
  const end = roundUp(offset + bytes, align);
  const aligned = start === offset && end === offset + bytes;
  const finish = await beginRequest(node, start, end, !aligned || (flags & REQ_SERIALISING) !== 0);
  try {
    if (aligned) {
      await alignedWrite(node, offset, bytes, buf, flags);
      return;
    }
    // Read-modify-write of the partial blocks at either end.
    const padded = new Uint8Array(end - start);
    const head = offset - start;
    const tail = end - (offset + bytes);
    const merged = isMergedPadding(end - start, align, head, tail);
    await readPadding(node, start, end, head > 0, tail > 0, merged, padded);
    const dataFlags = flags & ~(REQ_ZERO_WRITE | REQ_MAY_UNMAP | REQ_NO_FALLBACK);
    if (!(flags & REQ_ZERO_WRITE)) {
      padded.set(buf!.subarray(0, bytes), head);
      await alignedWrite(node, start, end - start, padded, dataFlags);
      return;
    }
    // Zeroes: the padded blocks are written as data, the aligned middle as zeroes.
    padded.fill(0, head, head + bytes);
    let pos = start;
    if (head || merged) {
      pos += merged ? end - start : align;
      await alignedWrite(node, start, pos - start, padded.subarray(0, pos - start), dataFlags);
    }
    const middleEnd = tail ? end - align : end;
    if (middleEnd > pos) await alignedWrite(node, pos, middleEnd - pos, null, flags);
    if (tail && !merged) await alignedWrite(node, end - align, align, padded.subarray(end - align - start), dataFlags);
  } finally {
    writeFinished(node, start, end - start);
    finish();
  }
}

/**
 * Whether the blocks padding a request are read (and, for zeroes, written) as one: a request
 * within one block, or with partial blocks at both ends that are neighbours (QEMU's merge_reads).
 */
function isMergedPadding(paddedBytes: number, align: number, head: number, tail: number): boolean {
  return paddedBytes === align || (paddedBytes === 2 * align && head > 0 && tail > 0);
}

/** The partial blocks at either end of an unaligned write (`padded` covers [start, end)). */
async function readPadding(
  node: BlockNode, start: number, end: number, head: boolean, tail: boolean, merged: boolean, padded: Uint8Array,
): Promise<void> {
  const align = node.limits.requestAlignment;
  if (merged) return readPaddingBlocks(node, start, end - start, padded, head, tail);
  if (head) await readPaddingBlocks(node, start, align, padded.subarray(0, align), true, false);
  if (tail) await readPaddingBlocks(node, end - align, align, padded.subarray(end - align - start), false, true);
}

/** One read of padding blocks into `into`, between QEMU's blkdebug events for the ends it holds. */
async function readPaddingBlocks(
  node: BlockNode, offset: number, bytes: number, into: Uint8Array, head: boolean, tail: boolean,
): Promise<void> {
  if (!takesDebugEvents(node)) return driverRead(node, offset, bytes, into, 0);
  if (head) await debugEvent(node, 'pwritev_rmw_head');
  if (tail) await debugEvent(node, 'pwritev_rmw_tail');
  await driverRead(node, offset, bytes, into, 0);
  if (head) await debugEvent(node, 'pwritev_rmw_after_head');
  if (tail) await debugEvent(node, 'pwritev_rmw_after_tail');
}

/** One aligned write or zero write (QEMU's bdrv_aligned_pwritev), between its blkdebug events. */
async function alignedWrite(node: BlockNode, offset: number, bytes: number, buf: Uint8Array | null, flags: number): Promise<void> {
  if (!takesDebugEvents(node)) return writeOrZeroes(node, offset, bytes, buf, flags);
  await debugEvent(node, flags & REQ_ZERO_WRITE ? 'pwritev_zero' : 'pwritev');
  try {
    await writeOrZeroes(node, offset, bytes, buf, flags);
  } finally {
    await debugEvent(node, 'pwritev_done');
  }
}

function writeOrZeroes(node: BlockNode, offset: number, bytes: number, buf: Uint8Array | null, flags: number): Promise<void> {
  return flags & REQ_ZERO_WRITE ? driverZeroes(node, offset, bytes, flags) : driverWrite(node, offset, bytes, buf!, flags);
}

export function childWriteZeroes(child: BdrvChild, offset: number, bytes: number, flags: number): Promise<void> {
  if ((flags & REQ_NO_FALLBACK) && (offset % child.node.limits.requestAlignment || bytes % child.node.limits.requestAlignment)) {
    return Promise.reject(errno('ENOTSUP'));
  }
  return childWrite(child, offset, bytes, null, flags | REQ_ZERO_WRITE);
}

async function driverWrite(node: BlockNode, offset: number, bytes: number, buf: Uint8Array, flags: number): Promise<void> {
  const write = node.driver.write;
  if (!write) throw errno('ENOTSUP');
  const supported = node.driver.supportedWriteFlags?.(node) ?? 0;
  const emulateFua = (flags & REQ_FUA) !== 0 && !(supported & REQ_FUA);
  flags &= supported;
  const max = driverMaxTransfer(node);
  if (bytes === 0) await write.call(node.driver, node, offset, 0, buf, flags);
  for (let done = 0; done < bytes; done += max) {
    const n = Math.min(max, bytes - done);
    await write.call(node.driver, node, offset + done, n, buf.subarray(done, done + n), flags);
  }
  if (emulateFua) await nodeFlush(node);
}

/** Efficient zero write if the driver has one, else (unless NO_FALLBACK) zero buffers. */
async function driverZeroes(node: BlockNode, offset: number, bytes: number, flags: number): Promise<void> {
  const zero = node.driver.writeZeroes;
  const supported = zero ? node.driver.supportedZeroFlags?.(node) ?? 0 : 0;
  // Only a driver that declares NO_FALLBACK can promise to zero without writing data.
  if (flags & REQ_NO_FALLBACK & ~supported) throw errno('ENOTSUP');
  if (zero) {
    const emulateFua = (flags & REQ_FUA) !== 0 && !(supported & REQ_FUA);
    try {
      const max = node.limits.maxZeroes || bytes;
      for (let done = 0; done < bytes; done += max) {
        await zero.call(node.driver, node, offset + done, Math.min(max, bytes - done), (flags & supported) | REQ_ZERO_WRITE);
      }
      if (emulateFua) await nodeFlush(node);
      return;
    } catch (e) {
      if (!(e instanceof BlkioError) || e.code !== 'ENOTSUP') throw e;
    }
  }
  if (flags & REQ_NO_FALLBACK) throw errno('ENOTSUP');
  const chunk = new Uint8Array(Math.min(bytes, node.limits.maxTransfer || MAX_BOUNCE_BUFFER, MAX_BOUNCE_BUFFER));
  const dataFlags = flags & ~(REQ_ZERO_WRITE | REQ_MAY_UNMAP | REQ_NO_FALLBACK);
  for (let done = 0; done < bytes; done += chunk.length) {
    const n = Math.min(chunk.length, bytes - done);
    await driverWrite(node, offset + done, n, chunk.subarray(0, n), dataFlags);
  }
}

export async function childWriteCompressed(child: BdrvChild, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  checkBufferRequest(offset, bytes);
  checkRange(offset, bytes);
  checkWritePerm(child, 0);
  const node = child.node;
  if (!node.driver.writeCompressed) throw new BlkioError('ENOTSUP', 'Compression is not supported by this driver');
  // An aligned empty request reaches the driver: for qcow2 it marks the end of a compressed stream.
  if (bytes === 0 && offset % node.limits.requestAlignment) return;
  const finish = await beginRequest(node, offset, offset + bytes, true);
  try {
    try {
      await node.driver.writeCompressed(node, offset, bytes, buf);
    } finally {
      await debugEvent(node, 'pwritev_done');
    }
  } finally {
    // Also when the event's handler fails: the request must end, or overlapping ones wait forever.
    writeFinished(node, offset, bytes);
    finish();
  }
}

/**
 * A discard cut as QEMU's bdrv_co_pdiscard cuts it: small pieces up to the discard (or request)
 * alignment, whole aligned units in between, a tail cut at the request alignment. Every piece goes
 * down, unaligned ones too (discard is advisory and devices may coalesce them): a driver with a
 * discard granularity, like qcow2, ignores the partial units itself.
 */
function* discardPieces(offset: number, bytes: number, limits: BlockLimits): Generator<[number, number]> {
  const requestAlign = limits.requestAlignment;
  const align = Math.max(limits.discardAlignment, requestAlign);
  const max = limits.maxDiscard ? roundDown(limits.maxDiscard, align) : Infinity;
  let head = offset % align;
  let tail = (offset + bytes) % align;
  while (bytes > 0) {
    let num = bytes;
    if (head) {
      num = Math.min(bytes, align - head);
      if (num % requestAlign) num %= requestAlign;
      head = (head + num) % align;
    } else if (tail) {
      if (num > align) {
        num -= tail;
      } else if (tail % requestAlign && tail > requestAlign) {
        tail %= requestAlign;
        num -= tail;
      }
    }
    num = Math.min(num, max);
    yield [offset, num];
    offset += num;
    bytes -= num;
  }
}

export async function childDiscard(child: BdrvChild, offset: number, bytes: number): Promise<void> {
  checkRange(offset, bytes);
  requirePerm(child, PERM_WRITE, PERM_WRITE, 'discard on');
  const node = child.node;
  // Root users check the range; below them, a discard past the end is clamped (as QEMU does).
  bytes = Math.max(0, Math.min(bytes, node.getLength() - offset));
  if (bytes === 0 || !node.discardUnmap || !node.driver.discard) return;
  const finish = await beginRequest(node, offset, offset + bytes, false);
  try {
    for (const [pos, num] of discardPieces(offset, bytes, node.limits)) await node.driver.discard(node, pos, num);
  } finally {
    writeFinished(node, offset, bytes);
    finish();
  }
}

/**
 * A write, zero write or discard of `[offset, offset + bytes)` ended, successfully or not
 * (QEMU's bdrv_co_write_req_finish): flushes have something to sync, and dirty bitmaps record it.
 */
function writeFinished(node: BlockNode, offset: number, bytes: number): void {
  node.writeGeneration++;
  markDirty(node.dirtyBitmaps, offset, bytes);
}

/**
 * QEMU's bdrv_co_flush: nothing on read-only nodes; a driver's own whole flush (quorum,
 * blkverify) replaces the rest; else caches go down, the storage is synced unless nothing was
 * written since the last flush (or cache.no-flush), and the children written through are
 * flushed, all of them even when one fails.
 */
export async function nodeFlush(node: BlockNode): Promise<void> {
  if (node.readOnly) return;
  if (node.driver.flushAll) return node.driver.flushAll(node);
  const generation = node.writeGeneration;
  // QEMU raises the flush events on the primary child, whether the driver has the step or not.
  const primary = node.primaryChild?.node;
  const raisesEvents = takesDebugEvents(primary);
  if (raisesEvents) await debugEvent(primary, 'flush_to_os');
  if (node.driver.flush) await node.driver.flush(node);
  if (!node.noFlush && node.flushedGeneration !== generation) {
    if (raisesEvents) await debugEvent(primary, 'flush_to_disk');
    if (node.driver.flushToDisk) await node.driver.flushToDisk(node);
  }
  let failure: unknown;
  for (const c of node.children) {
    if (!(c.perm & (PERM_WRITE | PERM_WRITE_UNCHANGED))) continue;
    await nodeFlush(c.node).catch((e: unknown) => {
      failure ??= e;
    });
  }
  if (failure !== undefined) throw failure;
  node.flushedGeneration = generation;
}

/** The sizes bdrv_co_truncate refuses before any driver sees them. */
export function checkNewLength(size: number): void {
  // Sizes from 2^63 up are negative to QEMU's int64_t.
  if (!Number.isInteger(size) || size < 0 || size >= 2 ** 63) throw new BlkioError('EINVAL', 'Image size cannot be negative');
  if (size > MAX_NODE_LENGTH) throw lengthPastMaximum(BigInt(size));
}

/** QEMU's error for a new length past the largest a node may have (exact: the command line's int64). */
export function lengthPastMaximum(size: bigint): BlkioError {
  return new BlkioError('EIO', `offset(${size}) exceeds maximum(${BigInt(MAX_NODE_LENGTH)})`);
}

export async function childTruncate(child: BdrvChild, size: number, exact: boolean, prealloc: string, flags = 0): Promise<void> {
  requirePerm(child, PERM_RESIZE, PERM_RESIZE, 'resize');
  const node = child.node;
  checkNewLength(size);
  if (!node.driver.truncate) throw new BlkioError('ENOTSUP', 'Image format driver does not support resize');
  if (node.readOnly) throw new BlkioError('EACCES', 'Image is read-only');
  // A longer backing file must not show through the grown area.
  const oldLength = node.getLength();
  const backing = node.isFilter ? undefined : node.backing;
  if (size > oldLength && backing && backing.node.getLength() > oldLength) flags |= REQ_ZERO_WRITE;
  if (flags & ~(node.driver.supportedTruncateFlags?.(node) ?? 0)) throw new BlkioError('ENOTSUP', 'Block driver does not support requested flags');
  await node.driver.truncate(node, size, exact, prealloc, flags);
  for (const bitmap of node.dirtyBitmaps) bitmap.resize(node.getLength());
  node.writeGeneration++;
}

// ---------------------------------------------------------------------------------------------
// VM state

type VmStateHook = 'saveVmState' | 'loadVmState';

/** bdrv_save_vmstate / bdrv_load_vmstate: no permission checks or tracking, as in QEMU. */
export async function nodeVmState(
  node: BlockNode, hook: VmStateHook, pos: number | bigint, bytes: number, buf: Uint8Array,
): Promise<void> {
  // QEMU's bounds first, on the exact offset (near 2^63 a rounded one would pass them): up to
  // them a node without VM state answers ENOTSUP.
  const exactPos = BigInt(pos);
  if (!(exactPos >= 0n && bytes >= 0 && exactPos + BigInt(bytes) <= BigInt(MAX_NODE_LENGTH))) throw errno('EIO');
  // The node that keeps the VM state.
  const target = node.primaryNodeWith(hook);
  if (!target) throw errno('ENOTSUP');
  checkRange(Number(pos), bytes);
  await target.driver[hook]!(target, Number(pos), bytes, buf);
}

// ---------------------------------------------------------------------------------------------
// Block status

/**
 * What the node knows about [offset, offset+bytes): data, zero, allocated in this layer.
 * Filters without their own answer pass the question to their filtered child.
 * `wantZero` false asks only what is cheap to know (QEMU's want_zero=false, as in
 * bdrv_co_is_zero_fast): no look at the host file below mapped data, and no zeroes for a range
 * past the end of a shorter backing file.
 */
export async function nodeBlockStatus(node: BlockNode, offset: number, bytes: number, wantZero = true): Promise<BlockStatusResult> {
  const length = node.getLength();
  if (offset >= length) return { status: STATUS_EOF, pnum: 0 };
  bytes = Math.min(bytes, length - offset);
  const result = driverStatusNow(node, offset, bytes) ?? await node.driver.blockStatus!(node, offset, bytes, wantZero);
  const query = questionBelow(node, offset, bytes, result, wantZero);
  let below: BlockStatusResult | undefined;
  if (query) {
    try {
      below = await nodeBlockStatus(query.node, query.offset, query.bytes, wantZero);
    } catch (e) {
      // Whether the host has a hole is only extra information for RECURSE.
      if (result.status & STATUS_RAW) throw e;
    }
  }
  return completeStatus(node, offset, bytes, result, below, wantZero);
}

/**
 * nodeBlockStatus without waiting, when every node asked can answer from memory (cached
 * metadata); undefined otherwise: nodeBlockStatus then answers (and reports errors).
 */
export function nodeBlockStatusNow(node: BlockNode, offset: number, bytes: number): BlockStatusResult | undefined {
  const length = node.getLength();
  if (offset >= length) return { status: STATUS_EOF, pnum: 0 };
  bytes = Math.min(bytes, length - offset);
  const result = driverStatusNow(node, offset, bytes);
  if (!result) return undefined;
  const query = questionBelow(node, offset, bytes, result);
  if (!query) return completeStatus(node, offset, bytes, result, undefined);
  const below = nodeBlockStatusNow(query.node, query.offset, query.bytes);
  return below && completeStatus(node, offset, bytes, result, below);
}

/**
 * nodeBlockStatusNow for [offset, offset+bytes) and the ranges after it, answer after answer,
 * into `list`: as many as the driver has at hand, none when the first needs waiting.
 */
export function nodeBlockStatusListNow(node: BlockNode, offset: number, bytes: number, list: StatusList): void {
  list.clear();
  const length = node.getLength();
  if (node.driver.blockStatusListNow && offset < length) {
    node.driver.blockStatusListNow(node, offset, Math.min(bytes, length - offset), list);
    completeStatusList(node, offset, list);
    if (list.count > 0) return;
  }
  const r = nodeBlockStatusNow(node, offset, bytes);
  if (r) list.push(r.status, r.pnum, r.map ?? offset, r.file);
}

/**
 * completeStatus for a list of the driver's answers, which ends before the first that needs a
 * question below (nodeBlockStatusNow answers that one).
 */
function completeStatusList(node: BlockNode, offset: number, list: StatusList): void {
  for (let i = 0; i < list.count; i++) {
    const status = list.status[i];
    if (status & (STATUS_RAW | STATUS_RECURSE)) {
      list.count = i;
      return;
    }
    list.status[i] = withLayerStatus(node, offset, status);
    offset += list.pnum[i];
  }
}

/** The driver's answer if it has one without waiting; nodes without blockStatus always have. */
function driverStatusNow(node: BlockNode, offset: number, bytes: number): BlockStatusResult | undefined {
  const driver = node.driver;
  if (driver.blockStatusNow) return driver.blockStatusNow(node, offset, bytes);
  if (driver.blockStatus) return undefined;
  if (node.filteredChild) return { status: STATUS_RAW, pnum: bytes, map: offset, file: node.filteredChild.node };
  // As QEMU's bdrv_co_block_status: only a protocol's data lies at the offset asked (vhdx has no mapping to give).
  if (driver.kind === 'format') return { status: STATUS_DATA, pnum: bytes };
  return { status: STATUS_DATA | STATUS_OFFSET_VALID, pnum: bytes, map: offset, file: node };
}

/**
 * What the node below must still be asked: RAW passes the whole question on to `file`; RECURSE
 * asks the host file whether mapped data sits on a hole (qcow2 with preallocated metadata: host
 * space never written, which reads as zeroes; QEMU's BDRV_BLOCK_RECURSE).
 */
function questionBelow(
  node: BlockNode, offset: number, bytes: number, result: BlockStatusResult, wantZero = true,
): { node: BlockNode; offset: number; bytes: number } | undefined {
  const { status, file } = result;
  const pnum = Math.min(result.pnum, bytes);
  if (status & STATUS_RAW) return file && { node: file, offset: result.map ?? offset, bytes: pnum };
  if (!wantZero || !(status & STATUS_RECURSE) || !file || file === node || result.map === undefined) return undefined;
  const mappedData = (status & (STATUS_DATA | STATUS_ZERO | STATUS_OFFSET_VALID)) === (STATUS_DATA | STATUS_OFFSET_VALID);
  return mappedData ? { node: file, offset: result.map, bytes: pnum } : undefined;
}

/** The node's status from the driver's answer and, when questionBelow had one, the answer below. */
function completeStatus(
  node: BlockNode, offset: number, bytes: number, result: BlockStatusResult, below: BlockStatusResult | undefined,
  wantZero = true,
): BlockStatusResult {
  let { status, pnum } = result;
  pnum = Math.min(pnum, bytes);
  if (status & STATUS_RAW && below) return { ...below, pnum: Math.min(pnum, below.pnum) };
  status = withLayerStatus(node, offset, status, wantZero);
  if (status & STATUS_RECURSE) {
    status &= ~STATUS_RECURSE;
    if (below) {
      const zero = (below.status & STATUS_ZERO) !== 0;
      // At or past the host's end, or zero up to it: the whole range reads as zeroes.
      if (below.pnum === 0 || (zero && result.map! + below.pnum >= result.file!.getLength())) {
        status |= STATUS_ZERO;
      } else {
        if (zero) status |= STATUS_ZERO;
        pnum = below.pnum;
      }
    }
  }
  return { ...result, status, pnum };
}

/** The driver's status at `offset` with what the layer adds: allocated, or zero with no backing there. */
function withLayerStatus(node: BlockNode, offset: number, status: number, wantZero = true): number {
  if (status & (STATUS_DATA | STATUS_ZERO)) return status | STATUS_ALLOCATED;
  if (node.driver.supportsBacking) {
    const cow = node.backing?.node;
    if (!cow || (wantZero && offset >= cow.getLength())) return status | STATUS_ZERO;
  }
  return status;
}

/** Whether this layer (not its backing chain) holds the data at offset, and for how many bytes. */
export async function isAllocated(node: BlockNode, offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }> {
  const r = await nodeBlockStatus(node, offset, bytes);
  return { allocated: (r.status & STATUS_ALLOCATED) !== 0, pnum: r.pnum };
}

/** The next node down a chain: a filter's child or a format's backing. */
export function chainNext(node: BlockNode): BlockNode | undefined {
  return node.cowChild?.node;
}

/** A block status answered through a chain, and which layer gave it. */
export interface ChainBlockStatus extends BlockStatusResult {
  /** Images (filters not counted) above the layer whose answer this is: 0 for top's own. */
  depth: number;
}

/**
 * Status of [offset, offset+bytes) seen through `top`'s chain (filters and backing files) down
 * to `base`, which is asked too only with includeBase (base undefined: the whole chain): the
 * answer of the first layer that has the range allocated, else of the last layer asked (QEMU's
 * bdrv_block_status_above). As in QEMU 7.2, the zeroes past the end of a layer shorter than
 * the ones above it count as allocated in that layer (so commit, mirror and copy-on-read
 * write them as zeroes). EOF comes from the layer that answered (where no layer has the range
 * allocated, from the last one asked, as in QEMU); past the end of top pnum is 0.
 */
export async function blockStatusAbove(
  top: BlockNode, base: BlockNode | undefined, offset: number, bytes: number, includeBase = false,
): Promise<ChainBlockStatus> {
  if (top === base && !includeBase) return { status: 0, pnum: bytes, depth: 0 };
  let r = await layerStatus(top, offset, bytes);
  let depth = 0;
  if (r.pnum === 0 || r.status & STATUS_ALLOCATED || top === base) return { ...r, depth };
  const eof = r.status & STATUS_EOF ? offset + r.pnum : -1;
  for (let above = top, layer = chainNext(top); layer && (includeBase || layer !== base); above = layer, layer = chainNext(layer)) {
    if (!above.isFilter) depth++;
    const below = await layerStatus(layer, offset, r.pnum);
    if (below.pnum === 0) {
      r = { status: STATUS_ZERO | STATUS_ALLOCATED, pnum: r.pnum, file: layer };
      break;
    }
    r = below;
    if (r.status & STATUS_ALLOCATED) {
      // The end of this layer need not be the end of top.
      r.status &= ~STATUS_EOF;
      break;
    }
    if (layer === base) break;
  }
  if (offset + r.pnum === eof) r.status |= STATUS_EOF;
  return { ...r, depth };
}

/** One layer's status, with EOF set when the answer reaches the end of that layer. */
async function layerStatus(node: BlockNode, offset: number, bytes: number): Promise<BlockStatusResult> {
  const r = await nodeBlockStatus(node, offset, bytes);
  if (r.pnum > 0 && offset + r.pnum === node.getLength()) r.status |= STATUS_EOF;
  return r;
}

/**
 * Whether some layer from `top` down to `base` (asked too with includeBase; undefined: the
 * whole chain) holds [offset, offset+pnum), and the depth of the first that does. Past the end
 * of top, the whole range counts as unallocated. (QEMU 7.2 answers pnum 0 there, which ends
 * copy-on-read's read early and leaves the rest of the buffer unread; blkio reads it.)
 */
export async function isAllocatedAbove(
  top: BlockNode, base: BlockNode | undefined, includeBase: boolean, offset: number, bytes: number,
): Promise<{ allocated: boolean; pnum: number; depth: number }> {
  if (offset >= top.getLength()) return { allocated: false, pnum: bytes, depth: 0 };
  const r = await blockStatusAbove(top, base, offset, bytes, includeBase);
  return { allocated: (r.status & STATUS_ALLOCATED) !== 0, pnum: r.pnum, depth: r.depth };
}

/** Request flags a node handles itself, for filters that pass through what their child supports. */
export function supportedWriteFlags(node: BlockNode): number {
  return node.driver.supportedWriteFlags?.(node) ?? 0;
}

export function supportedZeroFlags(node: BlockNode): number {
  return node.driver.writeZeroes ? node.driver.supportedZeroFlags?.(node) ?? 0 : 0;
}
