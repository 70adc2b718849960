/**
 * Allocating writes, the way QEMU places them: keep the clusters already owned (COPIED) and
 * contiguous, allocate new ones in one run per L2 slice (extending the previous run when the
 * clusters behind it are free), copy-on-write the untouched head and tail (whole subclusters
 * with extended L2), and only then point the L2 entries at the new clusters.
 */
import { BlkioError } from '../../errors.js';
import { debugEvent } from '../../block/io.js';
import { REQ_NO_FALLBACK, REQUEST_MAX_BYTES } from '../../block/flags.js';
import { HI_COPIED, splitOffset } from './entries.js';
import {
  ClusterType, SubclusterType, clusterType, getClusterTable, l2Offset, l2TableOffsetFor, l2SliceIndex, rangeMask, readL2, scIndex,
  readL2Into, standardRunEnd, subclusterRunLength, subclusterType, writeL2, ctz32, type L2Entry,
} from './mapping.js';
import { allocClusters, allocClustersAt, freeAnyCluster, freeClusters } from './refcount.js';
import { readGuest } from './read.js';
import { encryptInPlace } from './crypto.js';
import { readsAsZeroFast } from './zero.js';
import { fillSteppedRun } from '../../io-buffers.js';
import {
  hasDataFile, hex, markDirty, needAccurateRefcounts, offsetIntoCluster, signalCorruption, startOfCluster, type Allocation,
  type Qcow2State,
} from './state.js';
import type { Table } from './entries.js';

/** "No host offset chosen yet". */
const NONE = -1;

function cowStartOf(m: Allocation): number {
  return m.offset + m.cowStart.offset;
}

function cowEndOf(m: Allocation): number {
  return m.offset + m.cowEnd.offset + m.cowEnd.bytes;
}

/** Whether a write to the cluster needs a new host cluster (anything but an owned allocated one). */
function needsNewAlloc(s: Qcow2State, e: L2Entry): boolean {
  const type = clusterType(s, e);
  if (type === ClusterType.Normal || type === ClusterType.ZeroAlloc) return !(e.hi & HI_COPIED);
  return true;
}

/** Clusters from `index` on that all need (or all don't need) a new allocation; kept ones must be contiguous. */
function countSingleWriteClusters(s: Qcow2State, nbClusters: number, slice: Table, index: number, newAlloc: boolean): number {
  const e = readL2(s, slice, index);
  let expected = l2Offset(e);
  let i = 0;
  if (needsNewAlloc(s, e) === newAlloc) {
    // Standard entries that continue the first exactly (the same entry for new allocations,
    // each the next cluster for kept ones) need the same.
    i = standardRunEnd(s, slice, index, index + nbClusters, expected, !newAlloc) - index;
    expected += i * s.clusterSize;
  }
  for (; i < nbClusters; i++) {
    readL2Into(s, slice, index + i, e);
    if (needsNewAlloc(s, e) !== newAlloc) break;
    if (!newAlloc) {
      if (expected !== l2Offset(e)) break;
      expected += s.clusterSize;
    }
  }
  return i;
}

export interface HostRange {
  hostOffset: number;
  bytes: number;
  metas: Allocation[];
}

export type AllocResult = HostRange | { wait: Promise<void> };

/**
 * The host range for the start of a write of `bytes` at guest `offset` (lock held): how many
 * bytes can go to one contiguous host range, and the allocations (with their COW regions)
 * whose L2 entries must be linked after the data is written. Returns `wait` when an in-flight
 * allocation overlaps; the caller waits for it without the lock and asks again.
 */
export async function allocHostOffset(s: Qcow2State, offset: number, bytes: number): Promise<AllocResult> {
  const metas: Allocation[] = [];
  let start = offset;
  let remaining = bytes;
  let clusterOffset = NONE;
  let hostOffset = NONE;
  let cur = 0;
  try {
    for (;;) {
      if (hostOffset === NONE && clusterOffset !== NONE) hostOffset = clusterOffset;
      start += cur;
      remaining -= cur;
      if (clusterOffset !== NONE) clusterOffset += cur;
      if (remaining === 0) break;
      cur = remaining;

      const dep = dependencies(s, start, cur, metas.length > 0);
      if ('wait' in dep) return dep;
      cur = dep.bytes;
      if (cur === 0) break;

      const copied = await handleCopied(s, start, clusterOffset, cur, metas);
      if (copied.found) {
        clusterOffset = copied.hostOffset;
        cur = copied.bytes;
        continue;
      }
      if (copied.bytes === 0) break;

      const alloc = await handleAlloc(s, start, clusterOffset, cur, metas);
      if (!alloc.found) break;
      clusterOffset = alloc.hostOffset;
      cur = alloc.bytes;
    }
  } catch (e) {
    await abortAllocations(s, metas);
    throw e;
  }
  return { hostOffset, bytes: bytes - remaining, metas };
}

/** Shorten the request to stop before a conflicting in-flight allocation, or ask to wait for it. */
function dependencies(s: Qcow2State, start: number, bytes: number, haveMetas: boolean): { bytes: number } | { wait: Promise<void> } {
  const end = start + bytes;
  for (const old of s.inflight) {
    const oldStart = startOfCluster(s, cowStartOf(old));
    const oldEnd = Math.ceil(cowEndOf(old) / s.clusterSize) * s.clusterSize;
    if (end <= oldStart || start >= oldEnd) continue;
    if (old.keepOldClusters && (end <= cowStartOf(old) || start >= cowEndOf(old))) continue;
    bytes = start < oldStart ? oldStart - start : 0;
    if (bytes === 0) return haveMetas ? { bytes: 0 } : { wait: old.done };
  }
  return { bytes };
}

interface Step {
  found: boolean;
  hostOffset: number;
  bytes: number;
}

function clampToSlice(s: Qcow2State, guestOffset: number, bytes: number): number {
  const nb = Math.ceil((offsetIntoCluster(s, guestOffset) + bytes) / s.clusterSize);
  return Math.min(nb, s.l2SliceSize - l2SliceIndex(s, guestOffset), Math.floor(REQUEST_MAX_BYTES / s.clusterSize));
}

/** Clusters the image owns already (COPIED) at the start of the range, contiguous with `expected`. */
async function handleCopied(s: Qcow2State, guestOffset: number, expected: number, bytes: number, metas: Allocation[]): Promise<Step> {
  const nbClusters = clampToSlice(s, guestOffset, bytes);
  const { slice, index } = await getClusterTable(s, guestOffset);
  try {
    const entry = readL2(s, slice, index);
    const cluster = l2Offset(entry);
    if (needsNewAlloc(s, entry)) return { found: false, hostOffset: NONE, bytes };
    if (offsetIntoCluster(s, cluster)) {
      const kind = clusterType(s, entry) === ClusterType.ZeroAlloc ? 'Preallocated zero' : 'Data';
      throw await signalCorruption(s, true, `${kind} cluster offset ${hex(cluster)} unaligned (guest offset: ${hex(guestOffset)})`);
    }
    if (expected !== NONE && cluster !== expected) return { found: false, hostOffset: NONE, bytes: 0 };
    const keep = countSingleWriteClusters(s, nbClusters, slice, index, false);
    bytes = Math.min(bytes, keep * s.clusterSize - offsetIntoCluster(s, guestOffset));
    await calculateL2Meta(s, cluster, guestOffset, bytes, slice, index, metas, true);
    return { found: true, hostOffset: cluster + offsetIntoCluster(s, guestOffset), bytes };
  } finally {
    s.l2Cache.put(slice);
  }
}

/** New clusters for the start of the range: a fresh run, or an extension of `expected`'s run. */
async function handleAlloc(s: Qcow2State, guestOffset: number, expected: number, bytes: number, metas: Allocation[]): Promise<Step> {
  let nbClusters = clampToSlice(s, guestOffset, bytes);
  const { slice, index } = await getClusterTable(s, guestOffset);
  try {
    nbClusters = countSingleWriteClusters(s, nbClusters, slice, index, true);
    let allocOffset: number;
    if (hasDataFile(s)) {
      allocOffset = startOfCluster(s, guestOffset);
    } else if (expected === NONE) {
      allocOffset = await allocClusters(s, nbClusters * s.clusterSize);
    } else {
      allocOffset = startOfCluster(s, expected);
      nbClusters = await allocClustersAt(s, allocOffset, nbClusters);
      if (nbClusters === 0) return { found: false, hostOffset: NONE, bytes: 0 };
    }
    const inCluster = offsetIntoCluster(s, guestOffset);
    const nbBytes = Math.min(bytes + inCluster, nbClusters * s.clusterSize);
    bytes = Math.min(bytes, nbBytes - inCluster);
    await calculateL2Meta(s, allocOffset, guestOffset, bytes, slice, index, metas, false);
    return { found: true, hostOffset: allocOffset + inCluster, bytes };
  } finally {
    s.l2Cache.put(slice);
  }
}

/**
 * The clusters a write of [cowStartTo, cowEndFrom) (from the start of the first cluster, at
 * `index` in `slice`) touches: the first whose entry is invalid (-1: none), and for kept
 * clusters whether the written subclusters all hold data already, so nothing needs copying.
 * Kept apart from the async calculateL2Meta so that only this small loop runs hot.
 */
function scanWrittenClusters(
  s: Qcow2State, slice: Table, index: number, nbClusters: number, cowStartTo: number, cowEndFrom: number, keepOld: boolean,
): { invalidAt: number; skipCow: boolean } {
  // Only extended entries can be invalid: for new clusters there is nothing else to learn.
  if (!keepOld && !s.extendedL2) return { invalidAt: -1, skipCow: false };
  let skipCow = keepOld;
  const e: L2Entry = { hi: 0, lo: 0, zero: 0, alloc: 0 };
  for (let i = 0; i < nbClusters; i++) {
    readL2Into(s, slice, index + i, e);
    let type: SubclusterType;
    if (skipCow) {
      const from = Math.max(cowStartTo, i * s.clusterSize);
      const to = Math.min(cowEndFrom, (i + 1) * s.clusterSize);
      const firstSc = Math.floor((from % s.clusterSize) / s.subclusterSize);
      const lastSc = Math.floor(((to - 1) % s.clusterSize) / s.subclusterSize);
      type = subclusterType(s, e, firstSc);
      if (type !== SubclusterType.Normal || firstSc + subclusterRunLength(s, e, firstSc, type) <= lastSc) skipCow = false;
    } else {
      type = subclusterType(s, e, 0);
    }
    if (type === SubclusterType.Invalid) return { invalidAt: i, skipCow };
  }
  return { invalidAt: -1, skipCow };
}

/**
 * Record an allocation with the regions of its first and last cluster that must be copied
 * from the old contents (unless the clusters are kept and fully allocated already).
 */
async function calculateL2Meta(
  s: Qcow2State, hostCluster: number, guestOffset: number, bytes: number, slice: Table, index: number,
  metas: Allocation[], keepOld: boolean,
): Promise<void> {
  const cowStartTo = offsetIntoCluster(s, guestOffset);
  const cowEndFrom = cowStartTo + bytes;
  const nbClusters = Math.ceil(cowEndFrom / s.clusterSize);
  const scan = scanWrittenClusters(s, slice, index, nbClusters, cowStartTo, cowEndFrom, keepOld);
  if (scan.invalidAt >= 0) {
    throw await signalCorruption(s, true,
      `Invalid cluster entry found (L2 offset: ${hex(l2TableOffsetFor(s, guestOffset))}, L2 index: ${hex(index + scan.invalidAt)})`);
  }
  if (scan.skipCow) return;

  const first = readL2(s, slice, index);
  const firstSc = scIndex(s, guestOffset);
  const firstType = subclusterType(s, first, firstSc);
  let cowStartFrom: number;
  if (!keepOld) {
    switch (firstType) {
      case SubclusterType.Compressed: cowStartFrom = 0; break;
      case SubclusterType.Normal: case SubclusterType.ZeroAlloc: case SubclusterType.UnallocatedAlloc:
        cowStartFrom = s.extendedL2 ? Math.min(firstSc, ctz32(first.alloc)) * s.subclusterSize : 0;
        break;
      default: cowStartFrom = firstSc * s.subclusterSize;
    }
  } else {
    cowStartFrom = firstType === SubclusterType.Normal ? cowStartTo : firstSc * s.subclusterSize;
  }

  const last = readL2(s, slice, index + nbClusters - 1);
  const lastSc = scIndex(s, guestOffset + bytes - 1);
  const lastType = subclusterType(s, last, lastSc);
  let cowEndTo: number;
  if (!keepOld) {
    switch (lastType) {
      case SubclusterType.Compressed: cowEndTo = Math.ceil(cowEndFrom / s.clusterSize) * s.clusterSize; break;
      case SubclusterType.Normal: case SubclusterType.ZeroAlloc: case SubclusterType.UnallocatedAlloc:
        cowEndTo = Math.ceil(cowEndFrom / s.clusterSize) * s.clusterSize;
        if (s.extendedL2) {
          const clz = Math.clz32(last.alloc >>> 0);
          cowEndTo -= Math.min(s.subclustersPerCluster - lastSc - 1, clz) * s.subclusterSize;
        }
        break;
      default: cowEndTo = Math.ceil(cowEndFrom / s.subclusterSize) * s.subclusterSize;
    }
  } else {
    cowEndTo = lastType === SubclusterType.Normal ? cowEndFrom : Math.ceil(cowEndFrom / s.subclusterSize) * s.subclusterSize;
  }

  let finish!: () => void;
  const done = new Promise<void>((r) => (finish = r));
  const m: Allocation = {
    offset: startOfCluster(s, guestOffset),
    hostOffset: hostCluster,
    nbClusters,
    keepOldClusters: keepOld,
    cowStart: { offset: cowStartFrom, bytes: cowStartTo - cowStartFrom },
    cowEnd: { offset: cowEndFrom, bytes: cowEndTo - cowEndFrom },
    prealloc: false,
    skipCow: false,
    done,
    finish,
  };
  metas.push(m);
  s.inflight.add(m);
}

/**
 * Let the data write carry the COW regions when they surround it exactly (one host write
 * instead of three). Returns whether an allocation took the data.
 */
export function mergeCow(metas: readonly Allocation[], offset: number, bytes: number, data: Uint8Array): boolean {
  for (const m of metas) {
    if ((m.cowStart.bytes === 0 && m.cowEnd.bytes === 0) || m.skipCow) continue;
    if (cowStartOf(m) + m.cowStart.bytes !== offset) continue;
    if (m.offset + m.cowEnd.offset !== offset + bytes) continue;
    m.data = data;
    return true;
  }
  return false;
}

/**
 * When both COW regions of an allocation read as zeroes, zero its clusters in the file in one
 * efficient request instead of copying (only where the file can do it without writing data).
 */
export async function handleAllocSpace(s: Qcow2State, metas: readonly Allocation[]): Promise<void> {
  const node = s.node;
  // Zeroed host clusters would not decrypt to zeroes.
  if (!node || s.encryption) return;
  for (const m of metas) {
    if (!m.cowStart.bytes && !m.cowEnd.bytes) continue;
    if (!(await readsAsZeroFast(node, m.offset + m.cowStart.offset, m.cowStart.bytes)) ||
        !(await readsAsZeroFast(node, m.offset + m.cowEnd.offset, m.cowEnd.bytes))) continue;
    const start = m.hostOffset + m.cowStart.offset;
    const bytes = m.cowEnd.offset + m.cowEnd.bytes - m.cowStart.offset;
    debugEvent(s.file.node, 'cluster_alloc_space');
    try {
      await s.dataFile.writeZeroes(start, bytes, REQ_NO_FALLBACK);
    } catch (e) {
      if (e instanceof BlkioError && (e.code === 'ENOTSUP' || e.code === 'EAGAIN')) continue;
      throw e;
    }
    m.skipCow = true;
  }
}

/** Copy the COW regions (read through this image: backing, zeroes or old data) into the new clusters. */
async function performCow(s: Qcow2State, m: Allocation): Promise<void> {
  const { cowStart: start, cowEnd: end } = m;
  if ((start.bytes === 0 && end.bytes === 0) || m.skipCow) return;
  const dataBytes = end.offset - (start.offset + start.bytes);
  const total = start.bytes + (m.data ? dataBytes : 0) + end.bytes;
  const buf = new Uint8Array(total);
  const head = buf.subarray(0, start.bytes);
  const tail = buf.subarray(total - end.bytes);
  const file = s.file.node;
  if (start.bytes && end.bytes && dataBytes <= 16384) {
    // One read covering both regions and the small gap between them.
    debugEvent(file, 'cow_read');
    const whole = new Uint8Array(end.offset + end.bytes - start.offset);
    await readGuest(s, m.offset + start.offset, whole.length, whole);
    head.set(whole.subarray(0, start.bytes));
    tail.set(whole.subarray(whole.length - end.bytes));
  } else {
    if (start.bytes) {
      debugEvent(file, 'cow_read');
      await readGuest(s, m.offset + start.offset, start.bytes, head);
    }
    if (end.bytes) {
      debugEvent(file, 'cow_read');
      await readGuest(s, m.offset + end.offset, end.bytes, tail);
    }
  }
  if (s.encryption) {
    // The guest data is encrypted already; the copied regions are encrypted for their new place.
    encryptInPlace(s.encryption, head, m.offset + start.offset, m.hostOffset + start.offset);
    encryptInPlace(s.encryption, tail, m.offset + end.offset, m.hostOffset + end.offset);
  }
  if (m.data) {
    buf.set(m.data.subarray(0, dataBytes), start.bytes);
    debugEvent(file, 'write_aio');
    debugEvent(file, 'cow_write');
    await s.dataFile.write(m.hostOffset + start.offset, total, buf);
  } else {
    if (start.bytes) {
      debugEvent(file, 'cow_write');
      await s.dataFile.write(m.hostOffset + start.offset, start.bytes, head);
    }
    if (end.bytes) {
      debugEvent(file, 'cow_write');
      await s.dataFile.write(m.hostOffset + end.offset, end.bytes, tail);
    }
  }
  // The L2 entries may only reach the disk once the copied data has.
  s.l2Cache.dependOnFlush();
}

/**
 * Point the allocation's L2 entries (from `index` in `slice`) at its clusters; returns the
 * entries replaced. Kept apart from the async linkL2 so that only this small loop runs hot.
 */
function pointEntries(s: Qcow2State, m: Allocation, slice: Table, index: number): L2Entry[] {
  if (pointedIntoEmptyEntries(s, m, slice, index)) return [];
  const replaced: L2Entry[] = [];
  const writtenFrom = m.cowStart.offset;
  const writtenTo = m.cowEnd.offset + m.cowEnd.bytes;
  // Each is written into the slice at once: one object of each serves every entry.
  const old: L2Entry = { hi: 0, lo: 0, zero: 0, alloc: 0 };
  const entry: L2Entry = { hi: 0, lo: 0, zero: 0, alloc: 0 };
  for (let i = 0; i < m.nbClusters; i++) {
    readL2Into(s, slice, index + i, old);
    if (old.hi || old.lo) replaced.push({ ...old });
    const [hi, lo] = splitOffset(m.hostOffset + i * s.clusterSize);
    entry.hi = hi | HI_COPIED;
    entry.lo = lo;
    entry.zero = old.zero;
    entry.alloc = old.alloc;
    if (s.extendedL2 && !m.prealloc) {
      const from = Math.max(writtenFrom, i * s.clusterSize);
      const to = Math.min(writtenTo, (i + 1) * s.clusterSize);
      const firstSc = Math.floor((from % s.clusterSize) / s.subclusterSize);
      const lastSc = Math.floor(((to - 1) % s.clusterSize) / s.subclusterSize);
      const range = rangeMask(firstSc, lastSc + 1);
      entry.alloc = (old.alloc | range) >>> 0;
      entry.zero = (old.zero & ~range) >>> 0;
    }
    writeL2(s, slice, index + i, entry);
  }
  return replaced;
}

/**
 * pointEntries' common case, a copy into an empty table: standard entries that are all zero
 * become the allocation's clusters in order, each with COPIED set, and none is replaced. False
 * (nothing written) otherwise. One native scan and one native fill: no object per entry, and
 * no per-entry JS loop for V8 to optimise.
 */
function pointedIntoEmptyEntries(s: Qcow2State, m: Allocation, slice: Table, index: number): boolean {
  const end = index + m.nbClusters;
  const view = slice.view;
  if (s.extendedL2 || view.getUint32(index * 8) !== 0 || view.getUint32(index * 8 + 4) !== 0) return false;
  if (standardRunEnd(s, slice, index, end, 0, false) !== end) return false;
  const [hi, lo] = splitOffset(m.hostOffset);
  fillSteppedRun(slice.data, index, end, (hi | HI_COPIED) >>> 0, lo, s.clusterSize);
  return true;
}

/** Point the L2 entries at the allocation's clusters and release the clusters they replace (lock held). */
async function linkL2(s: Qcow2State, m: Allocation): Promise<void> {
  if (s.lazyRefcounts) await markDirty(s);
  if (needAccurateRefcounts(s)) await s.l2Cache.setDependency(s.refcountCache);
  const { slice, index } = await getClusterTable(s, m.offset);
  let replaced: L2Entry[];
  try {
    s.l2Cache.markDirty(slice);
    replaced = pointEntries(s, m, slice, index);
  } finally {
    s.l2Cache.put(slice);
  }
  // Replaced clusters (a compressed one, or one another request linked first) lose a reference;
  // they are not discarded since the next allocation will likely reuse them.
  if (!m.keepOldClusters) for (const old of replaced) await freeAnyCluster(s, old.hi, old.lo, 'never');
}

function retire(s: Qcow2State, m: Allocation): void {
  s.inflight.delete(m);
  m.finish();
}

/** Undo allocations whose data could not be written. */
export async function abortAllocations(s: Qcow2State, metas: readonly Allocation[]): Promise<void> {
  for (const m of [...metas].reverse()) {
    if (!m.keepOldClusters && !hasDataFile(s)) await freeClusters(s, m.hostOffset, m.nbClusters * s.clusterSize, 'never').catch(() => {});
    retire(s, m);
  }
}

/**
 * Complete allocations after their data was written: COW without the lock, then the L2 update
 * with it. Newest first, as QEMU's list goes.
 */
export async function linkAllocations(s: Qcow2State, metas: readonly Allocation[]): Promise<void> {
  const pending = [...metas].reverse();
  try {
    while (pending.length) {
      const m = pending[0];
      await performCow(s, m);
      await s.lock.run(() => linkL2(s, m));
      retire(s, m);
      pending.shift();
    }
  } catch (e) {
    await s.lock.run(() => abortAllocations(s, pending));
    throw e;
  }
}

/** An allocation for preallocation: no data, and the subcluster bits stay as they were (the COW regions are still copied). */
export function markPrealloc(metas: readonly Allocation[]): void {
  for (const m of metas) m.prealloc = true;
}
