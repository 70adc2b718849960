/** QED's per-node state and its tables: L1 in memory, the L2 tables used last cached. */
import type { BdrvChild } from '../../block/child.js';
import type { Mutex } from '../../block/mutex.js';
import { getU64, setU64, view } from '../format-helpers.js';
import type { LruMap } from '../lru-map.js';
import type { QedHeader } from './header.js';

export interface QedState {
  file: BdrvChild;
  header: QedHeader;
  /** Where the next cluster goes: the file's length at open, rounded down to a whole cluster. */
  fileSize: number;
  /** Entries of one table (L1 or L2). */
  tableEntries: number;
  l1: Uint8Array;
  /** The L2 tables used last, by file offset, as read (or being read). */
  l2Cache: LruMap<number, Promise<Uint8Array>>;
  /** Held by writes, so that allocations and table updates never interleave. */
  lock: Mutex;
}

/** Entry `index` of a table (little-endian uint64). */
export function clusterEntry(table: Uint8Array, index: number): number {
  return getU64(view(table), index * 8);
}

export function setClusterEntry(table: Uint8Array, index: number, value: number): void {
  setU64(view(table), index * 8, value);
}

/** A data cluster's offset: cluster-aligned, past the header, inside the file. */
export function isClusterOffsetValid(s: QedState, offset: number): boolean {
  const cs = s.header.clusterSize;
  return offset % cs === 0 && offset >= s.header.headerSize * cs && offset < s.fileSize;
}

/**
 * A table's offset: its first and last cluster valid. As in QEMU, a one-cluster table counts
 * as wrapping around, so images with a table size of 1 never open.
 */
export function isTableOffsetValid(s: QedState, offset: number): boolean {
  const last = offset + (s.header.tableSize - 1) * s.header.clusterSize;
  return last > offset && isClusterOffsetValid(s, offset) && isClusterOffsetValid(s, last);
}

/** How many L2 tables stay in memory, as in QEMU. */
export const L2_CACHE_TABLES = 50;

/** The L2 table at `offset`, read unless cached. */
export function loadL2Table(s: QedState, offset: number): Promise<Uint8Array> {
  let table = s.l2Cache.get(offset);
  if (!table) {
    const bytes = new Uint8Array(s.tableEntries * 8);
    table = s.file.read(offset, bytes.length, bytes).then(() => bytes);
    s.l2Cache.set(offset, table);
    // A table that failed to load is read again next time.
    table.catch(() => s.l2Cache.delete(offset));
  }
  return table;
}
