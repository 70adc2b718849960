/**
 * Guest -> host mapping: L1 and L2 tables (standard and extended entries with 32 subclusters),
 * cluster and subcluster types, the lookup the read path and block status use, and the
 * table management writes need (L1 growth, L2 allocation and copy-on-write of shared tables).
 */
import { BlkioError } from '../../errors.js';
import { debugEvent } from '../../block/io.js';
import {
  entryOffset, getHi, getLo, HI_COMPRESSED, HI_COPIED, LO_ZERO, makeTable, set64, splitOffset, type Table,
} from './entries.js';
import { OFFSET_L1_SIZE } from './header.js';
import { MAX_CLUSTER_OFFSET, allocClusters, freeClusters } from './refcount.js';
import { preventMetadataOverwrite } from './overlap.js';
import { steppedRunEnd } from '../../io-buffers.js';
import { hasDataFile, hex, offsetIntoCluster, signalCorruption, type Qcow2State } from './state.js';

/** Largest L1 table in bytes (QCOW_MAX_L1_SIZE). */
export const MAX_L1_SIZE = 32 * 2 ** 20;

export enum ClusterType { Unallocated, ZeroPlain, ZeroAlloc, Normal, Compressed }

export enum SubclusterType {
  Normal, Compressed, ZeroPlain, ZeroAlloc, UnallocatedPlain, UnallocatedAlloc, Invalid,
}

/** One L2 entry: the descriptor halves and, with extended L2, the subcluster bitmap halves. */
export interface L2Entry {
  hi: number;
  lo: number;
  /** Bits 32-63 of the bitmap: subcluster reads as zeroes. */
  zero: number;
  /** Bits 0-31 of the bitmap: subcluster allocated. */
  alloc: number;
}

export const ALL_ONES = 0xffffffff;

export function readL2(s: Qcow2State, t: Table, index: number): L2Entry {
  return readL2Into(s, t, index, { hi: 0, lo: 0, zero: 0, alloc: 0 });
}

/**
 * readL2 into an entry the caller reuses: loops over the entries of a request (32 per 2 MiB
 * with 64 KiB clusters, 8192 per block status of a slice) then make no object per entry.
 */
export function readL2Into(s: Qcow2State, t: Table, index: number, e: L2Entry): L2Entry {
  const base = index * s.l2EntrySize;
  const v = t.view;
  e.hi = v.getUint32(base);
  e.lo = v.getUint32(base + 4);
  e.zero = s.extendedL2 ? v.getUint32(base + 8) : 0;
  e.alloc = s.extendedL2 ? v.getUint32(base + 12) : 0;
  return e;
}

export function writeL2(s: Qcow2State, t: Table, index: number, e: L2Entry): void {
  const base = index * s.l2EntrySize;
  t.view.setUint32(base, e.hi >>> 0);
  t.view.setUint32(base + 4, e.lo >>> 0);
  if (s.extendedL2) {
    t.view.setUint32(base + 8, e.zero >>> 0);
    t.view.setUint32(base + 12, e.alloc >>> 0);
  }
}

export function sameEntry(a: L2Entry, b: L2Entry): boolean {
  return a.hi === b.hi && a.lo === b.lo && a.zero === b.zero && a.alloc === b.alloc;
}

export function l2Offset(e: L2Entry): number {
  return entryOffset(e.hi, e.lo);
}

export function clusterType(s: Qcow2State, e: L2Entry): ClusterType {
  if (e.hi & HI_COMPRESSED) return ClusterType.Compressed;
  const offset = entryOffset(e.hi, e.lo);
  if (e.lo & LO_ZERO && !s.extendedL2) return offset ? ClusterType.ZeroAlloc : ClusterType.ZeroPlain;
  if (offset) return ClusterType.Normal;
  // Offset 0 is valid in an external data file, whose clusters always carry COPIED.
  return e.hi & HI_COPIED && hasDataFile(s) ? ClusterType.Normal : ClusterType.Unallocated;
}

/**
 * The first entry in (from, to) of `slice` that does not continue entry `from` exactly: the
 * same flags and, with `contiguous`, each the next host cluster after the one before (entry
 * `from`'s host offset is `firstOffset`). Such standard entries all map alike, so one scan
 * (native where it can) replaces a step each. Returns `from + 1` where the scan cannot tell:
 * extended L2 entries, or offsets that would carry past MAX_CLUSTER_OFFSET into the flag bits.
 */
export function standardRunEnd(
  s: Qcow2State, slice: Table, from: number, to: number, firstOffset: number, contiguous: boolean,
): number {
  if (s.extendedL2) return from + 1;
  if (!contiguous) return steppedRunEnd(slice.data, from, to, 0);
  if (firstOffset + (to - from) * s.clusterSize > MAX_CLUSTER_OFFSET) return from + 1;
  return steppedRunEnd(slice.data, from, to, s.clusterSize);
}

export function isAllocatedType(t: ClusterType): boolean {
  return t === ClusterType.Compressed || t === ClusterType.Normal || t === ClusterType.ZeroAlloc;
}

export function subclusterType(s: Qcow2State, e: L2Entry, sc: number): SubclusterType {
  const type = clusterType(s, e);
  if (!s.extendedL2) {
    switch (type) {
      case ClusterType.Compressed: return SubclusterType.Compressed;
      case ClusterType.ZeroPlain: return SubclusterType.ZeroPlain;
      case ClusterType.ZeroAlloc: return SubclusterType.ZeroAlloc;
      case ClusterType.Normal: return SubclusterType.Normal;
      default: return SubclusterType.UnallocatedPlain;
    }
  }
  const bit = (1 << sc) >>> 0;
  switch (type) {
    case ClusterType.Compressed: return SubclusterType.Compressed;
    case ClusterType.Normal:
      if (e.zero & e.alloc) return SubclusterType.Invalid;
      if (e.zero & bit) return SubclusterType.ZeroAlloc;
      return e.alloc & bit ? SubclusterType.Normal : SubclusterType.UnallocatedAlloc;
    default:
      if (e.alloc) return SubclusterType.Invalid;
      return e.zero & bit ? SubclusterType.ZeroPlain : SubclusterType.UnallocatedPlain;
  }
}

/** Bits [from, to) of a 32-bit subcluster mask. */
export function rangeMask(from: number, to: number): number {
  return (((2 ** to) - 1) - ((2 ** from) - 1)) >>> 0;
}

export function ctz32(x: number): number {
  x >>>= 0;
  return x === 0 ? 32 : 31 - Math.clz32((x & -x) >>> 0);
}

function cto32(x: number): number {
  return ctz32(~x >>> 0);
}

/**
 * How many subclusters from `from` on share its type (`type`, from subclusterType: a number,
 * so the per-cluster loops make no object); -1 when the entry is invalid.
 */
export function subclusterRunLength(s: Qcow2State, e: L2Entry, from: number, type: SubclusterType): number {
  if (type === SubclusterType.Invalid) return -1;
  if (!s.extendedL2 || type === SubclusterType.Compressed) return s.subclustersPerCluster - from;
  switch (type) {
    case SubclusterType.Normal:
      return cto32(e.alloc | rangeMask(0, from)) - from;
    case SubclusterType.ZeroPlain:
    case SubclusterType.ZeroAlloc:
      return cto32(e.zero | rangeMask(0, from)) - from;
    default:
      return ctz32((e.zero | e.alloc) & ~rangeMask(0, from)) - from;
  }
}

export function l1Index(s: Qcow2State, offset: number): number {
  return Math.floor(offset / (s.clusterSize * s.l2Size));
}

export function l2Index(s: Qcow2State, offset: number): number {
  return Math.floor(offset / s.clusterSize) % s.l2Size;
}

export function l2SliceIndex(s: Qcow2State, offset: number): number {
  return Math.floor(offset / s.clusterSize) % s.l2SliceSize;
}

export function scIndex(s: Qcow2State, offset: number): number {
  return Math.floor(offsetIntoCluster(s, offset) / s.subclusterSize);
}

/** Load the cached slice of the L2 table at `l2TableOffset` that maps `offset`. */
export function loadL2Slice(s: Qcow2State, offset: number, l2TableOffset: number): Promise<Table> {
  return s.l2Cache.get(l2SliceOffset(s, offset, l2TableOffset));
}

/** Host offset of the slice of the L2 table at `l2TableOffset` that maps `offset`. */
function l2SliceOffset(s: Qcow2State, offset: number, l2TableOffset: number): number {
  return l2TableOffset + (l2Index(s, offset) - l2SliceIndex(s, offset)) * s.l2EntrySize;
}

export function l1Entry(s: Qcow2State, index: number): { offset: number; copied: boolean } {
  return { offset: l1EntryOffset(s, index), copied: (getHi(s.l1Table, index) & HI_COPIED) !== 0 };
}

/** The L2 table offset of L1 entry `index` (loops over the table need no object per entry). */
export function l1EntryOffset(s: Qcow2State, index: number): number {
  return entryOffset(getHi(s.l1Table, index), getLo(s.l1Table, index));
}

export interface HostMapping {
  type: SubclusterType;
  /** Bytes from the guest offset with this type (and contiguous host offsets). */
  bytes: number;
  /** Host offset of the guest offset, for types with one. */
  hostOffset: number;
  /** The L2 entry (compressed clusters need the whole descriptor). */
  entry: L2Entry;
}

const NO_ENTRY: L2Entry = { hi: 0, lo: 0, zero: 0, alloc: 0 };

/** Host offset of the L2 table that maps `offset` (0: none, the range is unallocated). */
export function l2TableOffsetFor(s: Qcow2State, offset: number): number {
  const l1i = l1Index(s, offset);
  return l1i < s.l1Size ? l1EntryOffset(s, l1i) : 0;
}

/** Bytes from the start of `offset`'s cluster that one lookup covers: at most to the end of the L2 slice. */
function lookupReach(s: Qcow2State, offset: number, bytes: number): number {
  return Math.min(bytes + offsetIntoCluster(s, offset), (s.l2SliceSize - l2SliceIndex(s, offset)) * s.clusterSize);
}

function unallocatedMapping(s: Qcow2State, offset: number, bytes: number): HostMapping {
  return { type: SubclusterType.UnallocatedPlain, bytes: lookupReach(s, offset, bytes) - offsetIntoCluster(s, offset), hostOffset: 0, entry: NO_ENTRY };
}

function unalignedL2Table(l2TableOffset: number, l1i: number): string {
  return `L2 table offset ${hex(l2TableOffset)} unaligned (L1 index: ${hex(l1i)})`;
}

/** The mapping read from a loaded L2 slice, or the corruption found there. */
function mappingInSlice(s: Qcow2State, offset: number, bytes: number, slice: Table, l2TableOffset: number): HostMapping | { corruption: string } {
  const inCluster = offsetIntoCluster(s, offset);
  const needed = lookupReach(s, offset, bytes);
  const index = l2SliceIndex(s, offset);
  const sc = scIndex(s, offset);
  const entry = readL2(s, slice, index);
  const nbClusters = Math.ceil(needed / s.clusterSize);
  const type = subclusterType(s, entry, sc);
  if (s.header.version < 3 && (type === SubclusterType.ZeroPlain || type === SubclusterType.ZeroAlloc)) {
    return { corruption: `Zero cluster entry found in pre-v3 image (L2 offset: ${hex(l2TableOffset)}, L2 index: ${hex(index)})` };
  }
  let hostOffset = 0;
  if (type === SubclusterType.Normal || type === SubclusterType.UnallocatedAlloc || type === SubclusterType.ZeroAlloc) {
    const hostCluster = l2Offset(entry);
    if (offsetIntoCluster(s, hostCluster)) {
      return {
        corruption: `Cluster allocation offset ${hex(hostCluster)} unaligned (L2 offset: ${hex(l2TableOffset)}, L2 index: ${hex(index)})`,
      };
    }
    hostOffset = hostCluster + inCluster;
    if (hasDataFile(s) && hostOffset !== offset) {
      return {
        corruption: `External data file host cluster offset ${hex(hostCluster)} does not match guest cluster offset: ${hex(offset - inCluster)}, L2 index: ${hex(index)})`,
      };
    }
  }
  const count = countContiguousSubclusters(s, nbClusters, sc, slice, index);
  if (typeof count !== 'number') {
    return { corruption: `Invalid cluster entry found  (L2 offset: ${hex(l2TableOffset)}, L2 index: ${hex(count.invalidIndex)})` };
  }
  const reach = Math.min((count + sc) * s.subclusterSize, needed);
  return { type, bytes: reach - inCluster, hostOffset, entry };
}

/**
 * What `bytes` at guest `offset` map to: the type of the first subcluster and how far the same
 * type extends (contiguous on the host for allocated types), at most to the end of the L2 slice.
 * Call with the lock held.
 */
export async function getHostOffset(s: Qcow2State, offset: number, bytes: number): Promise<HostMapping> {
  const l2TableOffset = l2TableOffsetFor(s, offset);
  if (!l2TableOffset) return unallocatedMapping(s, offset, bytes);
  if (offsetIntoCluster(s, l2TableOffset)) throw await signalCorruption(s, true, unalignedL2Table(l2TableOffset, l1Index(s, offset)));
  debugEvent(s.file.node, 'l2_load');
  const slice = await loadL2Slice(s, offset, l2TableOffset);
  try {
    const m = mappingInSlice(s, offset, bytes, slice, l2TableOffset);
    if ('corruption' in m) throw await signalCorruption(s, true, m.corruption);
    return m;
  } finally {
    s.l2Cache.put(slice);
  }
}

/**
 * getHostOffset answered from memory, without waiting: undefined when the L2 slice is not
 * cached or the entry is corrupt (getHostOffset then reads it, or reports the corruption).
 * Call when no one holds the lock.
 */
export function getHostOffsetNow(s: Qcow2State, offset: number, bytes: number): HostMapping | undefined {
  const first: { mapping?: HostMapping } = {};
  forEachHostOffsetNow(s, offset, bytes, keepFirst, first);
  return first.mapping;
}

function keepFirst(_s: Qcow2State, m: HostMapping, first: { mapping?: HostMapping }): boolean {
  first.mapping = m;
  return false;
}

/**
 * What getHostOffset tells for `offset` and the ranges after it, answered from memory, one
 * after another while they are in the same cached L2 slice, each given to `take` until it
 * returns false. Nothing when the first would need waiting; the walk ends before a corrupt
 * entry. `take` gets `context` (no closure per call: V8 then inlines the few functions).
 * Call when no one holds the lock.
 */
export function forEachHostOffsetNow<T>(
  s: Qcow2State, offset: number, bytes: number, take: (s: Qcow2State, m: HostMapping, context: T) => boolean, context: T,
): void {
  const l2TableOffset = l2TableOffsetFor(s, offset);
  if (!l2TableOffset) {
    take(s, unallocatedMapping(s, offset, bytes), context);
    return;
  }
  if (offsetIntoCluster(s, l2TableOffset)) return;
  const slice = s.l2Cache.peek(l2SliceOffset(s, offset, l2TableOffset));
  if (!slice) return;
  const end = offset - offsetIntoCluster(s, offset) + lookupReach(s, offset, bytes);
  while (offset < end) {
    const m = mappingInSlice(s, offset, end - offset, slice, l2TableOffset);
    if ('corruption' in m) return;
    debugEvent(s.file.node, 'l2_load');
    if (!take(s, m, context)) return;
    offset += m.bytes;
  }
}

/** Subclusters from `sc` of the first cluster on that share its type (and host contiguity). */
function countContiguousSubclusters(
  s: Qcow2State, nbClusters: number, sc: number, slice: Table, index: number,
): number | { invalidIndex: number } {
  let count = 0;
  let expectedType = SubclusterType.Normal;
  let expectedOffset = 0;
  let checkOffset = false;
  const entry: L2Entry = { hi: 0, lo: 0, zero: 0, alloc: 0 };
  for (let i = 0; i < nbClusters; i++) {
    const first = i === 0 ? sc : 0;
    readL2Into(s, slice, index + i, entry);
    const type = subclusterType(s, entry, first);
    const n = subclusterRunLength(s, entry, first, type);
    if (n < 0) return { invalidIndex: index + i };
    if (i === 0) {
      if (type === SubclusterType.Compressed) return n;
      expectedType = type;
      expectedOffset = l2Offset(entry);
      checkOffset = type === SubclusterType.Normal || type === SubclusterType.ZeroAlloc || type === SubclusterType.UnallocatedAlloc;
    } else if (type !== expectedType) {
      break;
    } else if (checkOffset) {
      expectedOffset += s.clusterSize;
      if (expectedOffset !== l2Offset(entry)) break;
    }
    count += n;
    if (first + n < s.subclustersPerCluster) break;
    if (i === 1) {
      // A run goes on: standard entries that continue the second exactly are of its type.
      // (Not scanned from the first: runs of one cluster, as in a sparse image's map, would
      // pay a native call each.)
      const alike = standardRunEnd(s, slice, index + 1, index + nbClusters, expectedOffset, checkOffset) - index - 2;
      count += alike;
      if (checkOffset) expectedOffset += alike * s.clusterSize;
      i += alike;
    }
  }
  return count;
}

// ---------------------------------------------------------------------------------------------
// Tables for writing

/**
 * The L2 slice for `offset`, ready to be modified: the L1 table is grown if too small and the
 * L2 table allocated (or copied, if shared) when its L1 entry lacks the COPIED flag. `put` it.
 */
export async function getClusterTable(s: Qcow2State, offset: number): Promise<{ slice: Table; index: number }> {
  const l1i = l1Index(s, offset);
  if (l1i >= s.l1Size) await growL1Table(s, l1i + 1, false);
  let { offset: l2TableOffset, copied } = l1Entry(s, l1i);
  if (offsetIntoCluster(s, l2TableOffset)) {
    throw await signalCorruption(s, true, `L2 table offset ${hex(l2TableOffset)} unaligned (L1 index: ${hex(l1i)})`);
  }
  if (!copied) {
    await l2Allocate(s, l1i);
    if (l2TableOffset) await freeClusters(s, l2TableOffset, s.l2Size * s.l2EntrySize, 'other');
    l2TableOffset = l1EntryOffset(s, l1i);
  }
  const slice = await loadL2Slice(s, offset, l2TableOffset);
  return { slice, index: l2SliceIndex(s, offset) };
}

/** A new L2 table for L1 entry `index`: zeroed, or a copy of the table the entry pointed to. */
async function l2Allocate(s: Qcow2State, index: number): Promise<void> {
  const oldEntry = { hi: getHi(s.l1Table, index), lo: getLo(s.l1Table, index) };
  const old = entryOffset(oldEntry.hi, oldEntry.lo);
  const tableBytes = s.l2Size * s.l2EntrySize;
  const newOffset = await allocClusters(s, tableBytes);
  try {
    if (newOffset === 0) throw await signalCorruption(s, true, 'Preventing invalid allocation of L2 table at offset 0');
    await s.refcountCache.flush();
    const sliceBytes = s.l2SliceSize * s.l2EntrySize;
    for (let pos = 0; pos < s.clusterSize; pos += sliceBytes) {
      const slice = await s.l2Cache.getEmpty(newOffset + pos);
      try {
        if (old === 0) {
          slice.data.fill(0);
        } else {
          debugEvent(s.file.node, 'l2_alloc_cow_read');
          const oldSlice = await s.l2Cache.get(old + pos);
          slice.data.set(oldSlice.data);
          s.l2Cache.put(oldSlice);
        }
        debugEvent(s.file.node, 'l2_alloc_write');
        s.l2Cache.markDirty(slice);
      } finally {
        s.l2Cache.put(slice);
      }
    }
    await s.l2Cache.flush();
    const [hi, lo] = splitOffset(newOffset);
    set64(s.l1Table, index, hi | HI_COPIED, lo);
    await writeL1Entry(s, index);
  } catch (e) {
    set64(s.l1Table, index, oldEntry.hi, oldEntry.lo);
    if (newOffset > 0) await freeClusters(s, newOffset, tableBytes, 'always').catch(() => {});
    throw e;
  }
}

/** Write the L1 entry (with its neighbours in one request-alignment unit), synchronously. */
export async function writeL1Entry(s: Qcow2State, index: number): Promise<void> {
  const unit = Math.max(8, Math.min(s.file.node.limits.requestAlignment, s.clusterSize)) / 8;
  const first = index - (index % unit);
  const buf = new Uint8Array(unit * 8);
  const count = Math.max(0, Math.min(unit, s.l1Size - first));
  buf.set(s.l1Table.data.subarray(first * 8, (first + count) * 8));
  await preventMetadataOverwrite(s, s.l1TableOffset + first * 8, buf.length, 'active L1 table');
  debugEvent(s.file.node, 'l1_update');
  await s.file.write(s.l1TableOffset + first * 8, buf.length, buf);
  await s.file.flush();
}

/** Move the L1 table to new clusters with at least `minSize` entries (grown by half unless exact). */
export async function growL1Table(s: Qcow2State, minSize: number, exact: boolean): Promise<void> {
  if (minSize <= s.l1Size) return;
  if (minSize > 0x7fffffff / 8) throw new BlkioError('EFBIG');
  let newSize = minSize;
  if (!exact) {
    newSize = s.l1Size || 1;
    while (minSize > newSize) newSize = Math.floor((newSize * 3 + 1) / 2);
  }
  if (newSize > MAX_L1_SIZE / 8) throw new BlkioError('EFBIG');
  const newTable = makeTable(new Uint8Array(newSize * 8));
  newTable.data.set(s.l1Table.data.subarray(0, s.l1Size * 8));
  debugEvent(s.file.node, 'l1_grow_alloc_table');
  const newOffset = await allocClusters(s, newSize * 8);
  try {
    await s.refcountCache.flush();
    debugEvent(s.file.node, 'l1_grow_write_table');
    await s.file.write(newOffset, newSize * 8, newTable.data);
    await s.file.flush();
    const pointer = new Uint8Array(12);
    const view = new DataView(pointer.buffer);
    view.setUint32(0, newSize);
    view.setBigUint64(4, BigInt(newOffset));
    debugEvent(s.file.node, 'l1_grow_activate_table');
    await s.file.write(OFFSET_L1_SIZE, 12, pointer);
    await s.file.flush();
  } catch (e) {
    await freeClusters(s, newOffset, newSize * 8, 'other').catch(() => {});
    throw e;
  }
  const oldOffset = s.l1TableOffset;
  const oldSize = s.l1Size;
  s.l1Table = newTable;
  s.l1TableOffset = newOffset;
  s.l1Size = newSize;
  s.header.l1Size = newSize;
  s.header.l1TableOffset = newOffset;
  await freeClusters(s, oldOffset, oldSize * 8, 'other');
}

/** Drop the L1 entries from `newSize` on (zeroed on disk) and free their L2 tables; the table keeps its size. */
export async function shrinkL1Table(s: Qcow2State, newSize: number): Promise<void> {
  if (newSize >= s.l1Size) return;
  debugEvent(s.file.node, 'l1_shrink_write_table');
  try {
    await s.file.writeZeroes(s.l1TableOffset + newSize * 8, (s.l1Size - newSize) * 8);
    await s.file.flush();
  } catch (e) {
    s.l1Table.data.fill(0, newSize * 8);
    throw e;
  }
  debugEvent(s.file.node, 'l1_shrink_free_l2_clusters');
  for (let i = s.l1Size - 1; i >= newSize; i--) {
    const offset = l1EntryOffset(s, i);
    if (!offset) continue;
    await freeClusters(s, offset, s.clusterSize, 'always');
    set64(s.l1Table, i, 0, 0);
  }
}
