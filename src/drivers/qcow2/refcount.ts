/**
 * Refcounts and cluster allocation, in QEMU's order so that images get the same host layout:
 * first-fit search from a moving free-cluster index, self-describing refcount blocks, refcount
 * table growth into a fresh area at the end, compressed byte allocation, and frees that queue
 * discards for the file.
 */
import { BlkioError, toBlkioError } from '../../errors.js';
import { debugEvent, isZeroBuffer } from '../../block/io.js';
import {
  getRefcount as readRefcount, makeTable, reftableOffset, setRefcount, setReftableOffset, HI_COMPRESSED, entryOffset,
} from './entries.js';
import { OFFSET_REFCOUNT_TABLE } from './header.js';
import { ClusterType, clusterType } from './mapping.js';
import {
  hasDataFile, hex, offsetIntoCluster, signalCorruption, sizeToClusters, startOfCluster, writeStderr, type DiscardType, type Qcow2State,
} from './state.js';
import type { Table } from './entries.js';

/** Largest host offset a data cluster may have (QCOW_MAX_CLUSTER_OFFSET). */
export const MAX_CLUSTER_OFFSET = 2 ** 56 - 1;
/** Largest refcount table, in bytes (QCOW_MAX_REFTABLE_SIZE). */
export const MAX_REFTABLE_SIZE = 8 * 2 ** 20;

/** Thrown inside the allocator when a new refcount block took space the caller may have counted on. */
const AGAIN = Symbol('again');

function event(s: Qcow2State, name: string): void {
  debugEvent(s.file.node, name);
}

function reftableIndexOf(s: Qcow2State, clusterIndex: number): number {
  return Math.floor(clusterIndex / s.refcountBlockSize);
}

/** Entries the search for the last used refcount table entry skips per native comparison. */
const REFTABLE_SCAN_STEP = 64;

export function updateMaxRefcountTableIndex(s: Qcow2State): void {
  // A table is mostly empty (8192 entries in a 64 KiB cluster): an entry-by-entry loop over it
  // ran hot enough at every open to be optimised, which costs milliseconds and memory.
  let i = s.refcountTableSize - 1;
  while (i >= REFTABLE_SCAN_STEP && isZeroBuffer(s.refcountTable.data, (i + 1 - REFTABLE_SCAN_STEP) * 8, (i + 1) * 8)) {
    i -= REFTABLE_SCAN_STEP;
  }
  while (i > 0 && reftableOffset(s.refcountTable, i) === 0) i--;
  s.maxRefcountTableIndex = i;
}

/** Whether a refcount block covers host cluster `clusterIndex` (without one, its refcount is 0). */
export function hasRefcountBlock(s: Qcow2State, clusterIndex: number): boolean {
  const tableIndex = reftableIndexOf(s, clusterIndex);
  return tableIndex < s.refcountTableSize && reftableOffset(s.refcountTable, tableIndex) !== 0;
}

/** The refcount block at refcount table index `tableIndex` (undefined: none); `put` it. */
async function refcountBlockAt(s: Qcow2State, tableIndex: number): Promise<Table | undefined> {
  if (tableIndex >= s.refcountTableSize) return undefined;
  const blockOffset = reftableOffset(s.refcountTable, tableIndex);
  if (!blockOffset) return undefined;
  if (offsetIntoCluster(s, blockOffset)) throw await unalignedRefblock(s, blockOffset, tableIndex);
  return s.refcountCache.get(blockOffset);
}

function unalignedRefblock(s: Qcow2State, blockOffset: number, tableIndex: number): Promise<BlkioError> {
  return signalCorruption(s, true, `Refblock offset ${hex(blockOffset)} unaligned (reftable index: ${hex(tableIndex)})`);
}

/**
 * Fails, as reading all refcounts of the host clusters [0, end) would, on the first unaligned
 * refcount block among those covering them, without reading any block.
 */
export async function requireAlignedRefblocks(s: Qcow2State, end: number): Promise<void> {
  const last = Math.min(reftableIndexOf(s, end - 1), s.maxRefcountTableIndex, s.refcountTableSize - 1);
  for (let i = 0; i <= last; i++) {
    const blockOffset = reftableOffset(s.refcountTable, i);
    if (offsetIntoCluster(s, blockOffset)) throw await unalignedRefblock(s, blockOffset, i);
  }
}

/**
 * The refcount block at refcount table index `tableIndex` if it is cached; null when none
 * covers that part of the file (its refcounts are all 0); undefined when it must be read
 * first (or its offset is corrupt, which the reading path reports).
 */
function cachedRefcountBlock(s: Qcow2State, tableIndex: number): Table | null | undefined {
  if (tableIndex >= s.refcountTableSize) return null;
  const blockOffset = reftableOffset(s.refcountTable, tableIndex);
  if (!blockOffset) return null;
  return offsetIntoCluster(s, blockOffset) ? undefined : s.refcountCache.peek(blockOffset);
}

/**
 * The refcount of one host cluster without waiting; undefined when its refcount block must be
 * read first (getClusterRefcount). Loops over many clusters wait only on a cache miss.
 */
function refcountNow(s: Qcow2State, clusterIndex: number): number | undefined {
  const block = cachedRefcountBlock(s, reftableIndexOf(s, clusterIndex));
  if (block === null) return 0;
  return block && readRefcount(block, s.refcountOrder, clusterIndex % s.refcountBlockSize);
}

/**
 * Whether the `count` clusters from `first` are known free without waiting: one refcount
 * block (or none) covers them and it is cached. False also means "don't know".
 */
function knownFree(s: Qcow2State, first: number, count: number): boolean {
  const tableIndex = reftableIndexOf(s, first);
  if (reftableIndexOf(s, first + count - 1) !== tableIndex) return false;
  const block = cachedRefcountBlock(s, tableIndex);
  if (block === null) return true;
  if (!block) return false;
  // Whole bytes around sub-byte refcounts: a used neighbour only sends the caller the slow way.
  const bits = 2 ** s.refcountOrder;
  const firstInBlock = first % s.refcountBlockSize;
  return isZeroBuffer(block.data, Math.floor((firstInBlock * bits) / 8), Math.ceil(((firstInBlock + count) * bits) / 8));
}

/** The refcount of one host cluster (0 when no refcount block covers it). */
export async function getClusterRefcount(s: Qcow2State, clusterIndex: number): Promise<number> {
  const block = await refcountBlockAt(s, reftableIndexOf(s, clusterIndex));
  if (!block) return 0;
  try {
    return readRefcount(block, s.refcountOrder, clusterIndex % s.refcountBlockSize);
  } finally {
    s.refcountCache.put(block);
  }
}

/** How many of the host clusters [0, end) are referenced, counting no further than `limit`. */
export async function countReferencedClusters(s: Qcow2State, end: number, limit: number): Promise<number> {
  let referenced = 0;
  for (let first = 0; first < end && referenced < limit; first += s.refcountBlockSize) {
    const block = await refcountBlockAt(s, reftableIndexOf(s, first));
    if (!block) continue;
    try {
      referenced += countNonZeroRefcounts(block, s.refcountOrder, Math.min(s.refcountBlockSize, end - first));
    } finally {
      s.refcountCache.put(block);
    }
  }
  return Math.min(referenced, limit);
}

/**
 * How many of the first `count` refcounts of a block are not zero. Refcounts of whole bytes
 * are read as the unsigned words they are (whose byte order does not matter for a zero test):
 * reading each through getRefcount made this loop most of a short map's time.
 */
function countNonZeroRefcounts(block: Table, order: number, count: number): number {
  const { data } = block;
  let nonZero = 0;
  if (order < 3 || data.byteOffset % 4 !== 0) {
    for (let i = 0; i < count; i++) if (readRefcount(block, order, i) !== 0) nonZero++;
    return nonZero;
  }
  const bytes = count << (order - 3);
  const words = order === 3 ? data.subarray(0, bytes)
    : order === 4 ? new Uint16Array(data.buffer, data.byteOffset, bytes / 2) : new Uint32Array(data.buffer, data.byteOffset, bytes / 4);
  // A 64-bit refcount is two words.
  const step = order === 6 ? 2 : 1;
  for (let i = 0; i < words.length; i += step) if (words[i] !== 0 || words[i + step - 1] !== 0) nonZero++;
  return nonZero;
}

/**
 * Reserve `size` bytes of clusters without touching refcounts: the first run of free clusters
 * at or after the free-cluster index.
 */
async function allocClustersNoref(s: Qcow2State, size: number, max: number): Promise<number> {
  if (s.cacheDiscards) await processDiscards(s, true);
  const nbClusters = sizeToClusters(s, size);
  // Mostly the clusters at the free-cluster index are free: one comparison instead of a loop.
  if (knownFree(s, s.freeClusterIndex, nbClusters)) {
    s.freeClusterIndex += nbClusters;
  } else {
    for (let i = 0; i < nbClusters; i++) {
      const index = s.freeClusterIndex++;
      if ((refcountNow(s, index) ?? (await getClusterRefcount(s, index))) !== 0) i = -1;
    }
  }
  if (s.freeClusterIndex > 0 && s.freeClusterIndex - 1 > Math.floor(max / s.clusterSize)) throw new BlkioError('EFBIG');
  const offset = (s.freeClusterIndex - nbClusters) * s.clusterSize;
  noteByteClusterReuse(s, offset, nbClusters);
  return offset;
}

/**
 * A cluster that compressed data was packed into can be freed and then handed out whole. QEMU
 * 7.2 goes on packing compressed data into it behind its new owner's back (a shared data
 * cluster: corruption); allocBytes starts elsewhere while the new owner still holds it.
 */
function noteByteClusterReuse(s: Qcow2State, offset: number, nbClusters: number): void {
  if (!s.freeByteOffset) return;
  const index = Math.floor(s.freeByteOffset / s.clusterSize);
  const first = offset / s.clusterSize;
  if (index >= first && index < first + nbClusters) s.freeByteClusterReused = true;
}

/** Allocate and reference clusters for `size` bytes; returns the host offset of the first. */
export async function allocClusters(s: Qcow2State, size: number): Promise<number> {
  event(s, 'cluster_alloc');
  for (;;) {
    const offset = await allocClustersNoref(s, size, MAX_CLUSTER_OFFSET);
    if ((await updateRefcount(s, offset, size, 1, false, 'never')) !== AGAIN) return offset;
  }
}

/** Allocate up to `nbClusters` clusters exactly at `offset`, as many as are free there. */
export async function allocClustersAt(s: Qcow2State, offset: number, nbClusters: number): Promise<number> {
  if (nbClusters === 0) return 0;
  for (;;) {
    let i = knownFree(s, offset / s.clusterSize, nbClusters) ? nbClusters : 0;
    for (let index = offset / s.clusterSize + i; i < nbClusters; i++, index++) {
      if ((refcountNow(s, index) ?? (await getClusterRefcount(s, index))) !== 0) break;
    }
    if ((await updateRefcount(s, offset, i * s.clusterSize, 1, false, 'never')) !== AGAIN) {
      noteByteClusterReuse(s, offset, i);
      return i;
    }
  }
}

/** Bytes for a compressed cluster, packed after the previous one while its host cluster has room. */
export async function allocBytes(s: Qcow2State, size: number): Promise<number> {
  event(s, 'cluster_alloc_bytes');
  let offset = s.freeByteOffset;
  if (offset) {
    // Packing on is safe in a cluster nobody references any more, as QEMU does; not in one a
    // whole-cluster allocation took since.
    const refcount = await getClusterRefcount(s, Math.floor(offset / s.clusterSize));
    if (refcount === s.refcountMax || (s.freeByteClusterReused && refcount !== 0)) offset = 0;
  }
  let freeInCluster = s.clusterSize - offsetIntoCluster(s, offset);
  for (;;) {
    if (!offset || freeInCluster < size) {
      const maxOffset = Math.min(2 ** s.csizeShift - 1, MAX_CLUSTER_OFFSET);
      const newCluster = await allocClustersNoref(s, s.clusterSize, maxOffset);
      if (newCluster === 0) {
        throw await signalCorruption(s, true, 'Preventing invalid allocation of compressed cluster at offset 0');
      }
      if (!offset || Math.ceil(offset / s.clusterSize) * s.clusterSize !== newCluster) {
        offset = newCluster;
        freeInCluster = s.clusterSize;
      } else {
        freeInCluster += s.clusterSize;
      }
    }
    if ((await updateRefcount(s, offset, size, 1, false, 'never')) !== AGAIN) break;
    // A new refcount block was placed: QEMU starts over in a fresh cluster, not in the partly used one.
    offset = 0;
  }
  await s.l2Cache.setDependency(s.refcountCache);
  s.freeByteOffset = offsetIntoCluster(s, offset + size) ? offset + size : 0;
  s.freeByteClusterReused = false;
  return offset;
}

/** Returns false when nothing was freed because a refcount block had to be placed first. */
export async function freeClusters(s: Qcow2State, offset: number, size: number, type: DiscardType): Promise<boolean> {
  event(s, 'cluster_free');
  return (await updateRefcount(s, offset, size, 1, true, type)) !== AGAIN;
}

/** QEMU's qcow2_free_clusters: a failure is reported, and the clusters leak. */
export async function freeOrReport(s: Qcow2State, offset: number, bytes: number, type: DiscardType): Promise<void> {
  // QEMU's update_refcount fails with EAGAIN after placing a refcount block.
  const freed = await freeClusters(s, offset, bytes, type).catch((e: unknown) => toBlkioError(e));
  if (freed !== true) writeStderr(`qcow2_free_clusters failed: ${(freed || new BlkioError('EAGAIN')).strerror}\n`);
}

/** Change one cluster's refcount by `addend` (repairs by qemu-img check). */
export async function adjustRefcount(s: Qcow2State, offset: number, addend: number, decrease: boolean): Promise<void> {
  await updateRefcount(s, offset, 1, addend, decrease, 'always');
}

/** Drop the reference an L2 entry holds: a data cluster or the sectors of a compressed one. */
export async function freeAnyCluster(s: Qcow2State, hi: number, lo: number, type: DiscardType): Promise<void> {
  if (hasDataFile(s)) {
    // Data clusters are not refcounted: the data file is only told that the data is gone.
    const kind = clusterType(s, { hi, lo, zero: 0, alloc: 0 });
    if (s.discardPassthrough[type] && (kind === ClusterType.Normal || kind === ClusterType.ZeroAlloc)) {
      await s.dataFile.discard(entryOffset(hi, lo), s.clusterSize).catch(() => {});
    }
    return;
  }
  if (hi & HI_COMPRESSED) {
    const { offset, size } = compressedDescriptor(s, hi, lo);
    await freeOrReport(s, offset, size, type);
    return;
  }
  const offset = entryOffset(hi, lo);
  if (offsetIntoCluster(s, offset)) await signalCorruption(s, false, `Cannot free unaligned cluster ${hex(offset)}`);
  else if (offset) await freeOrReport(s, offset, s.clusterSize, type);
}

/**
 * Host byte offset and length (whole 512-byte sectors, less the start's offset in its sector).
 * `exactOffset` keeps offsets beyond 2^53, which only corrupt entries hold, for messages.
 */
export function compressedDescriptor(s: Qcow2State, hi: number, lo: number): { offset: number; size: number; exactOffset: bigint } {
  const entry = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
  const shift = BigInt(s.csizeShift);
  const exactOffset = entry & ((1n << shift) - 1n);
  const sectors = Number((entry >> shift) & BigInt(s.csizeMask)) + 1;
  return { offset: Number(exactOffset), size: sectors * 512 - (lo & 511), exactOffset };
}

/**
 * Add (or with `decrease` subtract) `addend` to the refcount of every cluster in the range,
 * allocating refcount blocks as needed. Returns AGAIN when a new refcount block was placed
 * where the caller may have wanted to allocate: the caller searches again.
 */
async function updateRefcount(
  s: Qcow2State, offset: number, length: number, addend: number, decrease: boolean, type: DiscardType,
): Promise<typeof AGAIN | void> {
  if (length === 0) return;
  if (decrease) await s.refcountCache.setDependency(s.l2Cache);
  const start = startOfCluster(s, offset);
  const last = startOfCluster(s, offset + length - 1);
  let block: Table | undefined;
  let oldTableIndex = -1;
  let clusterOffset = start;
  let failure: unknown;
  let again = false;
  try {
    for (; clusterOffset <= last; clusterOffset += s.clusterSize) {
      const clusterIndex = clusterOffset / s.clusterSize;
      const tableIndex = reftableIndexOf(s, clusterIndex);
      if (tableIndex !== oldTableIndex) {
        if (block) s.refcountCache.put(block);
        block = undefined;
        const result = await allocRefcountBlock(s, clusterIndex);
        if (result === AGAIN) {
          s.freeClusterIndex = Math.min(s.freeClusterIndex, start / s.clusterSize);
          again = true;
          break;
        }
        block = result;
        s.refcountCache.markDirty(block);
      }
      oldTableIndex = tableIndex;
      // The clusters of this block whose refcount stays in range and above zero, all at once.
      const blockEnd = Math.min(last / s.clusterSize + 1, (tableIndex + 1) * s.refcountBlockSize);
      const stop = changeRefcountsInBlock(s, block!, clusterIndex, blockEnd, decrease ? -addend : addend);
      if (stop > clusterIndex) {
        clusterOffset = (stop - 1) * s.clusterSize;
        continue;
      }
      const blockIndex = clusterIndex % s.refcountBlockSize;
      let refcount = readRefcount(block!, s.refcountOrder, blockIndex);
      if (decrease ? refcount - addend < 0 : refcount + addend > s.refcountMax) throw new BlkioError('EINVAL');
      refcount += decrease ? -addend : addend;
      if (refcount === 0 && clusterIndex < s.freeClusterIndex) s.freeClusterIndex = clusterIndex;
      setRefcount(block!, s.refcountOrder, blockIndex, refcount);
      if (refcount === 0) {
        // QEMU looks for cached tables at the start of the whole range, not at each cluster.
        if (s.refcountCache.has(offset)) {
          s.refcountCache.put(block!);
          block = undefined;
          oldTableIndex = -1;
          s.refcountCache.discard(offset);
        }
        s.l2Cache.discard(offset);
        if (s.discardPassthrough[type]) queueDiscard(s, clusterOffset, s.clusterSize);
      }
    }
  } catch (e) {
    failure = e;
  } finally {
    if (block) s.refcountCache.put(block);
  }
  if (failure !== undefined || again) {
    // Undo what was done so far (this may succeed, e.g. after ENOSPC for a new refcount block).
    if (clusterOffset > offset) await updateRefcount(s, offset, clusterOffset - offset, addend, !decrease, 'never').catch(() => {});
  }
  if (!s.cacheDiscards) await processDiscards(s, failure === undefined && !again);
  if (failure !== undefined) throw failure;
  return again ? AGAIN : undefined;
}

/**
 * Add `delta` to the refcounts of the clusters [first, end), all covered by `block`, until one
 * would drop to zero or leave the valid range: returns that cluster (or `end`), which the
 * caller handles on its own. Kept apart from the async updateRefcount so that only this small
 * loop runs hot.
 */
function changeRefcountsInBlock(s: Qcow2State, block: Table, first: number, end: number, delta: number): number {
  if (delta > 0 && delta <= s.refcountMax && s.refcountOrder >= 3 && end - first > 1) {
    // New clusters: refcounts of whole bytes, all zero, all become `delta` at once.
    const width = 1 << (s.refcountOrder - 3);
    const from = (first % s.refcountBlockSize) * width;
    const to = from + (end - first) * width;
    if (isZeroBuffer(block.data, from, to)) {
      setRefcount(block, s.refcountOrder, first % s.refcountBlockSize, delta);
      // The first refcount doubles over the rest by native copies.
      for (let filled = width; filled < to - from; filled *= 2) block.data.copyWithin(from + filled, from, from + Math.min(filled, to - from - filled));
      return end;
    }
  }
  for (let i = first; i < end; i++) {
    const blockIndex = i % s.refcountBlockSize;
    const refcount = readRefcount(block, s.refcountOrder, blockIndex) + delta;
    if (refcount <= 0 || refcount > s.refcountMax) return i;
    setRefcount(block, s.refcountOrder, blockIndex, refcount);
  }
  return end;
}

function queueDiscard(s: Qcow2State, offset: number, bytes: number): void {
  const end = offset + bytes;
  for (const d of s.pendingDiscards) {
    const dEnd = d.offset + d.bytes;
    if (end === d.offset || offset === dEnd) {
      d.offset = Math.min(d.offset, offset);
      d.bytes += bytes;
      return;
    }
  }
  s.pendingDiscards.push({ offset, bytes });
}

/**
 * Discard the freed ranges in the file, or just forget them when the operation that freed
 * them failed (errors are ignored: discarding is only an optimisation).
 */
export async function processDiscards(s: Qcow2State, succeeded: boolean): Promise<void> {
  const pending = s.pendingDiscards.splice(0);
  if (!succeeded) return;
  const fileLength = s.file.getLength();
  for (const d of pending) {
    // A freed cluster may reach past the end of the file (compressed data ends mid-cluster).
    const bytes = Math.min(d.bytes, fileLength - d.offset);
    if (bytes > 0) await s.file.discard(d.offset, bytes).catch(() => {});
  }
}

/**
 * The refcount block covering `clusterIndex`, allocating it if there is none: placed so that it
 * describes itself when possible, hooked into the refcount table (growing the table into a new
 * self-describing area when it is full). Returns AGAIN after allocating anything.
 */
async function allocRefcountBlock(s: Qcow2State, clusterIndex: number): Promise<Table | typeof AGAIN> {
  // QEMU fires this whenever a block is looked up for an update, allocated or not.
  event(s, 'refblock_alloc');
  const tableIndex = reftableIndexOf(s, clusterIndex);
  if (tableIndex < s.refcountTableSize) {
    const blockOffset = reftableOffset(s.refcountTable, tableIndex);
    if (blockOffset) {
      if (offsetIntoCluster(s, blockOffset)) throw await unalignedRefblock(s, blockOffset, tableIndex);
      return s.refcountCache.get(blockOffset);
    }
  }
  // The refcount table will point to data the L2 tables describe.
  await s.l2Cache.flush();
  const newBlock = await allocClustersNoref(s, s.clusterSize, Number.MAX_SAFE_INTEGER);
  if (newBlock === 0) throw await signalCorruption(s, true, 'Preventing invalid allocation of refcount block at offset 0');

  let block: Table;
  const newBlockIndex = newBlock / s.clusterSize;
  if (reftableIndexOf(s, newBlockIndex) === tableIndex) {
    block = await s.refcountCache.getEmpty(newBlock);
    block.data.fill(0);
    setRefcount(block, s.refcountOrder, newBlockIndex % s.refcountBlockSize, 1);
  } else {
    // Described by another block; this recurses at most twice before a block describes itself.
    // Should that allocate a block itself, the caller starts over.
    if ((await updateRefcount(s, newBlock, s.clusterSize, 1, false, 'never')) === AGAIN) return AGAIN;
    await s.refcountCache.flush();
    block = await s.refcountCache.getEmpty(newBlock);
    block.data.fill(0);
  }
  event(s, 'refblock_alloc_write');
  s.refcountCache.markDirty(block);
  try {
    await s.refcountCache.flush();
  } finally {
    s.refcountCache.put(block);
  }

  if (tableIndex < s.refcountTableSize) {
    event(s, 'refblock_alloc_hookup');
    const entry = makeTable(new Uint8Array(8));
    setReftableOffset(entry, 0, newBlock);
    await s.file.write(s.refcountTableOffset + tableIndex * 8, 8, entry.data);
    await s.file.flush();
    setReftableOffset(s.refcountTable, tableIndex, newBlock);
    s.maxRefcountTableIndex = Math.max(s.maxRefcountTableIndex, tableIndex);
    return AGAIN;
  }

  event(s, 'reftable_grow');
  // The new structures go behind everything the refcount blocks so far can describe,
  // including the cluster this new block will describe and the new block itself.
  const blocksUsed = Math.ceil(Math.max(clusterIndex + 1, newBlockIndex + 1) / s.refcountBlockSize);
  const metaOffset = blocksUsed * s.refcountBlockSize * s.clusterSize;
  await refcountArea(s, metaOffset, 0, false, tableIndex, newBlock);
  return AGAIN;
}

/**
 * Clusters of refcount metadata (blocks + table) needed to describe `clusters` clusters and
 * the metadata itself; with `generous`, room for half again as many table clusters.
 */
export function refcountMetadataSize(
  clusters: number, clusterSize: number, refcountOrder: number, generous: boolean,
): { bytes: number; blocks: number } {
  const blocksPerTableCluster = clusterSize / 8;
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / refcountsPerBlock);
    table = Math.ceil(blocks / blocksPerTableCluster);
    n = clusters + blocks + table;
    if (n === last && generous) {
      clusters += Math.ceil(table / 2);
      n = 0;
      generous = false;
    }
  } while (n !== last);
  return { bytes: (blocks + table) * clusterSize, blocks };
}

/**
 * Create refcount blocks and a new refcount table at `startOffset` (nothing may be allocated
 * there) covering everything up to there plus `additionalClusters`, switch the header to the
 * new table and free the old one. Returns the end offset of the new structures.
 */
export async function refcountArea(
  s: Qcow2State, startOffset: number, additionalClusters: number, exactSize: boolean,
  newRefblockIndex: number, newRefblockOffset: number,
): Promise<number> {
  const { blocks: totalRefblocks } = refcountMetadataSize(
    startOffset / s.clusterSize + additionalClusters, s.clusterSize, s.refcountOrder, !exactSize,
  );
  if (totalRefblocks > MAX_REFTABLE_SIZE) throw new BlkioError('EFBIG');
  const areaReftableIndex = Math.floor(startOffset / s.clusterSize / s.refcountBlockSize);
  let tableSize = exactSize ? totalRefblocks : totalRefblocks + Math.ceil(totalRefblocks / 2);
  const entriesPerCluster = s.clusterSize / 8;
  tableSize = Math.ceil(tableSize / entriesPerCluster) * entriesPerCluster;
  const tableClusters = (tableSize * 8) / s.clusterSize;
  if (tableSize > MAX_REFTABLE_SIZE) throw new BlkioError('EFBIG');

  const newTable = makeTable(new Uint8Array(tableSize * 8));
  const keep = tableSize > s.maxRefcountTableIndex ? s.maxRefcountTableIndex + 1 : tableSize;
  newTable.data.set(s.refcountTable.data.subarray(0, Math.min(keep, s.refcountTableSize) * 8));
  if (newRefblockOffset) setReftableOffset(newTable, newRefblockIndex, newRefblockOffset);

  let additionalRefblocks = 0;
  for (let i = areaReftableIndex; i < totalRefblocks; i++) if (!reftableOffset(newTable, i)) additionalRefblocks++;
  const tableOffset = startOffset + additionalRefblocks * s.clusterSize;
  const endOffset = tableOffset + tableClusters * s.clusterSize;

  let blockOffset = startOffset;
  for (let i = areaReftableIndex; i < totalRefblocks; i++) {
    let block: Table;
    const existing = reftableOffset(newTable, i);
    if (existing) {
      block = await s.refcountCache.get(existing);
    } else {
      block = await s.refcountCache.getEmpty(blockOffset);
      block.data.fill(0);
      s.refcountCache.markDirty(block);
      setReftableOffset(newTable, i, blockOffset);
      blockOffset += s.clusterSize;
    }
    const firstCovered = i * s.refcountBlockSize * s.clusterSize;
    if (firstCovered < endOffset) {
      const from = firstCovered < startOffset ? (startOffset - firstCovered) / s.clusterSize : 0;
      const to = Math.min((endOffset - firstCovered) / s.clusterSize, s.refcountBlockSize);
      for (let j = from; j < to; j++) setRefcount(block, s.refcountOrder, j, 1);
      s.refcountCache.markDirty(block);
    }
    s.refcountCache.put(block);
  }

  event(s, 'refblock_alloc_write_blocks');
  await s.refcountCache.flush();
  event(s, 'refblock_alloc_write_table');
  await s.file.write(tableOffset, tableSize * 8, newTable.data);
  await s.file.flush();

  const pointer = new Uint8Array(12);
  const view = new DataView(pointer.buffer);
  view.setBigUint64(0, BigInt(tableOffset));
  view.setUint32(8, tableClusters);
  event(s, 'refblock_alloc_switch_table');
  await s.file.write(OFFSET_REFCOUNT_TABLE, 12, pointer);
  await s.file.flush();

  const oldOffset = s.refcountTableOffset;
  const oldSize = s.refcountTableSize;
  s.refcountTable = newTable;
  s.refcountTableSize = tableSize;
  s.refcountTableOffset = tableOffset;
  s.header.refcountTableOffset = tableOffset;
  s.header.refcountTableClusters = tableClusters;
  updateMaxRefcountTableIndex(s);
  await freeClusters(s, oldOffset, oldSize * 8, 'other');
  return endOffset;
}

/** Index of the last cluster with a non-zero refcount below `fileSize`. */
export async function getLastCluster(s: Qcow2State, fileSize: number): Promise<number> {
  for (let i = sizeToClusters(s, fileSize) - 1; i >= 0; i--) {
    if ((refcountNow(s, i) ?? (await getClusterRefcount(s, i))) > 0) return i;
  }
  throw await signalCorruption(s, true, 'There are no references in the refcount table.');
}
