/**
 * `qemu-img check` for qcow2: count the references every piece of metadata and data makes to
 * each host cluster, compare with the stored refcounts (leaks, corruptions), check the COPIED
 * flags, gather allocation/fragmentation/compression statistics, and repair: fix single
 * refcounts, or rebuild the refcount structure from scratch when a referenced cluster has none.
 */
import type { CheckResult } from '../../block/driver.js';
import { BlkioError, errnoError, toBlkioError } from '../../errors.js';
import {
  entryOffset, getHi, getLo, HI_COPIED, LO_ZERO, l1Reserved, l2StdReserved, makeTable, reftableOffset, reftableReserved,
  setReftableOffset, setRefcount, hex64, type Table,
} from './entries.js';
import { bitmapDirectoryLocation, parseBitmapDirectory } from './bitmaps.js';
import { cryptoHeaderLocation } from './encryption.js';
import { OFFSET_REFCOUNT_TABLE } from './header.js';
import { preventMetadataOverwrite } from './overlap.js';
import { ClusterType, clusterType, readL2, writeL2, l1Entry, writeL1Entry } from './mapping.js';
import { markClean, markConsistent, readSnapshotTable, validateSnapshotTable } from './open.js';
import { MAX_SNAPSHOTS, writeSnapshotTable } from './snapshots.js';
import { compressedDescriptor, getClusterRefcount, hasRefcountBlock, updateMaxRefcountTableIndex, adjustRefcount } from './refcount.js';
import { hasDataFile, hex, sizeToClusters, type Qcow2State } from './state.js';

const FIX_LEAKS = 1;
const FIX_ERRORS = 2;
/** Extra data a v3 snapshot table entry needs: vm_state_size_large and disk_size. */
const MIN_V3_EXTRA_DATA = 16;

type Report = (line: string) => void;

function emptyResult(): CheckResult {
  return {
    corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0,
    totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0,
  };
}

/** Reference counts computed from the metadata, one per host cluster (QEMU's in-memory refcount table). */
class ReferenceCounts {
  private counts = new Float64Array(0);

  constructor(public size: number) {
    this.resize(size);
  }

  resize(size: number): void {
    if (size > this.counts.length) {
      const grown = new Float64Array(Math.max(size, this.counts.length * 2));
      grown.set(this.counts);
      this.counts = grown;
    }
    this.size = size;
  }

  get(i: number): number {
    return i < this.counts.length ? this.counts[i] : 0;
  }

  set(i: number, v: number): void {
    if (i >= this.counts.length) this.resize(Math.max(this.size, i + 1));
    this.counts[i] = v;
  }

  clear(): void {
    this.counts.fill(0);
  }
}

interface Checker {
  s: Qcow2State;
  res: CheckResult;
  fix: number;
  report: Report;
  refs: ReferenceCounts;
  rebuild: boolean;
}

/** Count a reference to every cluster of `[offset, offset + size)`. */
function incRefcounts(c: Checker, exactOffset: number | bigint, size: number): void {
  if (size <= 0) return;
  const { s } = c;
  // Rounding only affects offsets far beyond any file.
  const offset = Number(exactOffset);
  // The last cluster may be partly beyond the end of the file, but not a whole cluster.
  if (offset + size - s.file.getLength() >= s.clusterSize) {
    c.report(`ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${exactOffset.toString(16)} size 0x${size.toString(16)}`);
    c.res.corruptions++;
    return;
  }
  const first = Math.floor(offset / s.clusterSize);
  const last = Math.floor((offset + size - 1) / s.clusterSize);
  for (let k = first; k <= last; k++) {
    if (k >= c.refs.size) c.refs.resize(k + 1);
    const refcount = c.refs.get(k);
    if (refcount === s.refcountMax) {
      c.report(`ERROR: overflow cluster offset=0x${(k * s.clusterSize).toString(16)}`);
      c.report('Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing');
      c.res.corruptions++;
      continue;
    }
    c.refs.set(k, refcount + 1);
  }
}

async function readTable(c: Checker, offset: number, bytes: number, what: string): Promise<Table | undefined> {
  const data = new Uint8Array(bytes);
  try {
    await c.s.file.read(offset, bytes, data);
  } catch {
    c.report(`ERROR: I/O error in ${what}`);
    c.res.checkErrors++;
    return undefined;
  }
  return makeTable(data);
}

/**
 * Turn the L2 entry of an unaligned preallocated cluster into a zero cluster, on disk at once.
 * An overlap with other metadata ends the check of this table (and the whole check) as in
 * QEMU; a failed write only leaves the corruption unrepaired. Returns whether it was repaired.
 */
async function zeroUnalignedPreallocation(c: Checker, table: Table, l2Offset: number, index: number, active: boolean): Promise<boolean> {
  const { s, res } = c;
  const e = readL2(s, table, index);
  // Standard L2 entries say "zero" with their flag; extended ones with the bitmap (no data bits).
  writeL2(s, table, index, { hi: 0, lo: s.extendedL2 ? 0 : LO_ZERO, zero: e.zero, alloc: e.alloc });
  const entryAt = l2Offset + index * s.l2EntrySize;
  try {
    await preventMetadataOverwrite(s, entryAt, s.l2EntrySize, active ? 'active L2 table' : undefined);
  } catch (err) {
    c.report('ERROR: Overlap check failed');
    res.checkErrors++;
    throw err;
  }
  try {
    await s.file.write(entryAt, s.l2EntrySize, table.data.subarray(index * s.l2EntrySize, (index + 1) * s.l2EntrySize));
    await s.file.flush();
  } catch (err) {
    c.report(`ERROR: Failed to overwrite L2 table entry: ${toBlkioError(err).strerror}`);
    res.checkErrors++;
    return false;
  }
  res.corruptions--;
  res.corruptionsFixed++;
  return true;
}

async function checkL2(c: Checker, l2Offset: number, fragInfo: boolean, active: boolean): Promise<void> {
  const { s, res } = c;
  const table = await readTable(c, l2Offset, s.l2Size * s.l2EntrySize, 'check_refcounts_l2');
  if (!table) throw new BlkioError('EIO');
  let nextContiguous = 0;
  for (let i = 0; i < s.l2Size; i++) {
    const e = readL2(s, table, i);
    const type = clusterType(s, e);
    if (type !== ClusterType.Compressed && l2StdReserved(e.hi, e.lo)) {
      c.report(`ERROR found l2 entry with reserved bits set: ${hex64(e.hi, e.lo)}`);
      res.corruptions++;
    }
    switch (type) {
      case ClusterType.Compressed: {
        let { hi } = e;
        if (hi & HI_COPIED) {
          const { exactOffset } = compressedDescriptor(s, hi & ~HI_COPIED, e.lo);
          c.report(`ERROR: coffset=0x${exactOffset.toString(16)}: copied flag must never be set for compressed clusters`);
          hi &= ~HI_COPIED;
          res.corruptions++;
        }
        if (e.zero || e.alloc) {
          c.report(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex64(hi, e.lo)}`);
          res.corruptions++;
          break;
        }
        const { exactOffset, size } = compressedDescriptor(s, hi, e.lo);
        incRefcounts(c, exactOffset, size);
        if (fragInfo) {
          res.allocatedClusters++;
          res.compressedClusters++;
          res.fragmentedClusters++;
        }
        break;
      }
      case ClusterType.ZeroAlloc:
      case ClusterType.Normal: {
        const offset = entryOffset(e.hi, e.lo);
        if (e.zero & e.alloc) {
          res.corruptions++;
          c.report(`ERROR offset=${offset.toString(16)}: Allocated cluster has corrupted subcluster allocation bitmap`);
        }
        if (offset % s.clusterSize) {
          res.corruptions++;
          const containsData = s.extendedL2 ? e.alloc !== 0 : type === ClusterType.Normal;
          if (containsData) {
            c.report(`ERROR offset=${offset.toString(16)}: Data cluster is not properly aligned; L2 entry corrupted.`);
          } else {
            const repair = (c.fix & FIX_ERRORS) !== 0;
            c.report(`${repair ? 'Repairing' : 'ERROR'} offset=${offset.toString(16)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`);
            // Repaired, the entry reads as zeroes and references no cluster.
            if (repair && (await zeroUnalignedPreallocation(c, table, l2Offset, i, active))) continue;
          }
        }
        if (fragInfo) {
          res.allocatedClusters++;
          if (nextContiguous && offset !== nextContiguous) res.fragmentedClusters++;
          nextContiguous = offset + s.clusterSize;
        }
        // Clusters in an external data file are not refcounted.
        if (!hasDataFile(s)) incRefcounts(c, offset, s.clusterSize);
        break;
      }
      case ClusterType.Unallocated:
        if (e.alloc) {
          res.corruptions++;
          c.report('ERROR: Unallocated cluster has non-zero subcluster allocation map');
        }
        break;
      default:
        break;
    }
  }
}

async function checkL1(c: Checker, l1Offset: number, l1Size: number, fragInfo: boolean): Promise<void> {
  const { s, res } = c;
  if (!l1Size) return;
  incRefcounts(c, l1Offset, l1Size * 8);
  const table = await readTable(c, l1Offset, l1Size * 8, 'check_refcounts_l1');
  if (!table) throw new BlkioError('EIO');
  for (let i = 0; i < l1Size; i++) {
    const hi = getHi(table, i);
    const lo = getLo(table, i);
    if (!hi && !lo) continue;
    if (l1Reserved(hi, lo)) {
      c.report(`ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`);
      res.corruptions++;
    }
    const l2Offset = entryOffset(hi, lo);
    incRefcounts(c, l2Offset, s.clusterSize);
    if (l2Offset % s.clusterSize) {
      c.report(`ERROR l2_offset=${l2Offset.toString(16)}: Table is not cluster aligned; L1 entry corrupted`);
      res.corruptions++;
    }
    await checkL2(c, l2Offset, fragInfo, l1Offset === s.l1TableOffset);
  }
}

/** Bitmap directory, bitmap tables and their data clusters. */
async function checkBitmaps(c: Checker): Promise<void> {
  const { s } = c;
  const location = bitmapDirectoryLocation(s);
  if (!location) return;
  incRefcounts(c, location.offset, location.size);
  const dir = await readTable(c, location.offset, location.size, 'qcow2_check_bitmaps_refcounts');
  if (!dir) throw new BlkioError('EIO');
  for (const { tableOffset, tableSize } of parseBitmapDirectory(dir.data, location.count)) {
    incRefcounts(c, tableOffset, tableSize * 8);
    const table = await readTable(c, tableOffset, tableSize * 8, 'qcow2_check_bitmaps_refcounts');
    if (!table) throw new BlkioError('EIO');
    for (let j = 0; j < tableSize; j++) {
      const offset = entryOffset(getHi(table, j), getLo(table, j));
      if (offset) incRefcounts(c, offset, s.clusterSize);
    }
  }
}

async function checkRefblocks(c: Checker): Promise<void> {
  const { s, res } = c;
  for (let i = 0; i < s.refcountTableSize; i++) {
    const offset = reftableOffset(s.refcountTable, i);
    const cluster = Math.floor(offset / s.clusterSize);
    if (reftableReserved(s.refcountTable, i)) {
      c.report(`ERROR refcount table entry ${i} has reserved bits set`);
      res.corruptions++;
      c.rebuild = true;
      continue;
    }
    if (offset % s.clusterSize) {
      c.report(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      res.corruptions++;
      c.rebuild = true;
      continue;
    }
    if (cluster >= c.refs.size) {
      res.corruptions++;
      c.report(`${c.fix & FIX_ERRORS ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
      if (c.fix & FIX_ERRORS) {
        // QEMU's int64_t cannot hold the length such a block needs: it fails without a message.
        const resizable = offset <= 2 ** 63 - 1 - s.clusterSize;
        try {
          if (!resizable) throw new BlkioError('EINVAL');
          await s.file.truncate(offset + s.clusterSize, false);
          c.refs.resize(Math.max(c.refs.size, sizeToClusters(s, s.file.getLength())));
          res.corruptions--;
          res.corruptionsFixed++;
          incRefcounts(c, offset, s.clusterSize);
          continue;
        } catch (e) {
          const err = toBlkioError(e);
          if (resizable) s.node?.layer.warn(err.message);
          c.report(`ERROR could not resize image: ${err.strerror}`);
          c.rebuild = true;
        }
      }
      continue;
    }
    if (offset) {
      incRefcounts(c, offset, s.clusterSize);
      if (c.refs.get(cluster) !== 1) {
        c.report(`ERROR refcount block ${i} refcount=${c.refs.get(cluster)}`);
        res.corruptions++;
        c.rebuild = true;
      }
    }
  }
}

async function calculateRefcounts(c: Checker): Promise<void> {
  const { s } = c;
  incRefcounts(c, 0, s.clusterSize);
  await checkL1(c, s.l1TableOffset, s.l1Size, true);
  for (const sn of s.snapshots) {
    const l1Offset = sn.exactL1TableOffset ?? BigInt(sn.l1TableOffset);
    if (l1Offset % BigInt(s.clusterSize)) {
      c.report(`ERROR snapshot ${sn.id} (${sn.name}) l1_offset=${hex(l1Offset)}: L1 table is not cluster aligned; snapshot table entry corrupted`);
      c.res.corruptions++;
      continue;
    }
    if (sn.l1Size > (32 * 2 ** 20) / 8) {
      c.report(`ERROR snapshot ${sn.id} (${sn.name}) l1_size=${hex(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`);
      c.res.corruptions++;
      continue;
    }
    await checkL1(c, sn.l1TableOffset, sn.l1Size, false);
  }
  incRefcounts(c, s.header.snapshotsOffset, s.snapshotsSize);
  incRefcounts(c, s.refcountTableOffset, s.refcountTableSize * 8);
  if (s.cryptoExtension) {
    const crypto = cryptoHeaderLocation(s.cryptoExtension);
    incRefcounts(c, crypto.offset, crypto.length);
  }
  await checkBitmaps(c);
  await checkRefblocks(c);
}

/** Compare computed and stored refcounts; returns the highest cluster in use. */
async function compareRefcounts(c: Checker, fix: number): Promise<number> {
  const { s, res } = c;
  let highest = 0;
  for (let i = 0; i < c.refs.size; i++) {
    if (i % s.refcountBlockSize === 0 && !hasRefcountBlock(s, i)) {
      // Every refcount a missing block covers reads 0 (a repaired image far longer than its
      // refcount structure has millions of them): only referenced clusters differ there.
      const end = Math.min(c.refs.size, i + s.refcountBlockSize);
      for (; i < end; i++) {
        const computed = c.refs.get(i);
        if (computed === 0) continue;
        highest = i;
        await reportMismatch(c, fix, i, 0, computed);
      }
      i--;
      continue;
    }
    let stored: number;
    try {
      stored = await getClusterRefcount(s, i);
    } catch (e) {
      c.report(`Can't get refcount for cluster ${i}: ${toBlkioError(e).strerror}`);
      res.checkErrors++;
      continue;
    }
    const computed = c.refs.get(i);
    if (stored > 0 || computed > 0) highest = i;
    if (stored !== computed) await reportMismatch(c, fix, i, stored, computed);
  }
  return highest;
}

/** Report (and repair, as `fix` allows) a cluster whose stored refcount is not the computed one. */
async function reportMismatch(c: Checker, fix: number, i: number, stored: number, computed: number): Promise<void> {
  const { s, res } = c;
  let fixed: 'leaksFixed' | 'corruptionsFixed' | undefined;
  if (stored === 0) c.rebuild = true;
  else if (stored > computed && fix & FIX_LEAKS) fixed = 'leaksFixed';
  else if (stored < computed && fix & FIX_ERRORS) fixed = 'corruptionsFixed';
  c.report(`${fixed ? 'Repairing' : stored < computed ? 'ERROR' : 'Leaked'} cluster ${i} refcount=${stored} reference=${computed}`);
  if (fixed) {
    try {
      await adjustRefcount(s, i * s.clusterSize, Math.abs(stored - computed), stored > computed);
      res[fixed]++;
      return;
    } catch {
      // Counted below as not fixed.
    }
  }
  if (stored < computed) res.corruptions++;
  else res.leaks++;
}

/** Set the COPIED flags of L1 and L2 entries to what the refcounts say. */
async function checkOflagCopied(c: Checker): Promise<void> {
  const { s, res, fix } = c;
  const repair = fix & FIX_ERRORS ? true : fix & FIX_LEAKS ? !res.checkErrors && !res.corruptions && !res.leaks : false;
  for (let i = 0; i < s.l1Size; i++) {
    const { offset: l2Offset, copied } = l1Entry(s, i);
    if (!l2Offset) continue;
    let refcount: number;
    try {
      refcount = await getClusterRefcount(s, Math.floor(l2Offset / s.clusterSize));
    } catch {
      continue;
    }
    if ((refcount === 1) !== copied) {
      res.corruptions++;
      const entryText = hex64(getHi(s.l1Table, i), getLo(s.l1Table, i));
      c.report(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${entryText} refcount=${refcount}`);
      if (repair) {
        const hi = getHi(s.l1Table, i);
        s.l1Table.view.setUint32(i * 8, (refcount === 1 ? hi | HI_COPIED : hi & ~HI_COPIED) >>> 0);
        try {
          await writeL1Entry(s, i);
        } catch (e) {
          res.checkErrors++;
          throw e;
        }
        res.corruptions--;
        res.corruptionsFixed++;
      }
    }
    const table = makeTable(new Uint8Array(s.l2Size * s.l2EntrySize));
    try {
      await s.file.read(l2Offset, table.data.length, table.data);
    } catch (e) {
      c.report(`ERROR: Could not read L2 table: ${toBlkioError(e).strerror}`);
      res.checkErrors++;
      throw e;
    }
    let dirty = 0;
    for (let j = 0; j < s.l2Size; j++) {
      const e = readL2(s, table, j);
      const type = clusterType(s, e);
      if (type !== ClusterType.Normal && type !== ClusterType.ZeroAlloc) continue;
      let dataRefcount = 1;
      try {
        if (!hasDataFile(s)) dataRefcount = await getClusterRefcount(s, Math.floor(entryOffset(e.hi, e.lo) / s.clusterSize));
      } catch {
        continue;
      }
      if ((dataRefcount === 1) !== ((e.hi & HI_COPIED) !== 0)) {
        res.corruptions++;
        c.report(`${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hex64(e.hi, e.lo)} refcount=${dataRefcount}`);
        if (repair) {
          writeL2(s, table, j, { ...e, hi: (dataRefcount === 1 ? e.hi | HI_COPIED : e.hi & ~HI_COPIED) >>> 0 });
          dirty++;
        }
      }
    }
    if (dirty) {
      try {
        await preventMetadataOverwrite(s, l2Offset, s.clusterSize, 'active L2 table');
      } catch (e) {
        c.report(`ERROR: Could not write L2 table; metadata overlap check failed: ${toBlkioError(e).strerror}`);
        res.checkErrors++;
        throw e;
      }
      try {
        await s.file.write(l2Offset, s.clusterSize, table.data);
      } catch (e) {
        c.report(`ERROR: Could not write L2 table: ${toBlkioError(e).strerror}`);
        res.checkErrors++;
        throw e;
      }
      // Cached copies of this table are stale now.
      const sliceBytes = s.l2SliceSize * s.l2EntrySize;
      for (let o = l2Offset; o < l2Offset + s.clusterSize; o += sliceBytes) s.l2Cache.discard(o);
      res.corruptions -= dirty;
      res.corruptionsFixed += dirty;
    }
  }
}

/** First fit for `count` clusters in the computed refcounts, growing them at the end if needed. */
function allocInMemory(c: Checker, count: number, from: { first: number }): number {
  let cluster = from.first;
  let contiguous = 0;
  let firstGap = true;
  for (; cluster < c.refs.size && contiguous < count; cluster++) {
    if (!c.refs.get(cluster)) {
      contiguous++;
      if (firstGap) {
        from.first = cluster;
        firstGap = false;
      }
    } else {
      contiguous = 0;
    }
  }
  if (contiguous < count) c.refs.resize(cluster + count - contiguous);
  cluster -= contiguous;
  for (let i = 0; i < count; i++) c.refs.set(cluster + i, 1);
  return cluster * c.s.clusterSize;
}

/**
 * A write of the rebuild, checked against all metadata (the old refcount structure included),
 * failures named as QEMU names them.
 */
async function writeRebuilt(s: Qcow2State, offset: number, data: Uint8Array, what: string): Promise<void> {
  try {
    await preventMetadataOverwrite(s, offset, data.length);
    await s.file.write(offset, data.length, data);
  } catch (e) {
    throw errnoError(what, e);
  }
}

/** A refcount block's worth of the computed refcounts, in on-disk form. */
function encodeRefblock(c: Checker, blockIndex: number): Uint8Array {
  const { s } = c;
  const block = makeTable(new Uint8Array(s.clusterSize));
  const start = blockIndex * s.refcountBlockSize;
  for (let j = 0; j < s.refcountBlockSize; j++) {
    const v = c.refs.get(start + j);
    if (v) setRefcount(block, s.refcountOrder, j, v);
  }
  return block.data;
}

/**
 * Write a refcount block for every block-sized range with references in `[first, end)`,
 * allocating blocks (and growing the new table) as needed. Returns whether the table grew.
 */
async function writeRefblocks(c: Checker, first: number, end: number, reftable: { table: Table; entries: number }): Promise<boolean> {
  const { s } = c;
  const free = { first: 0 };
  let grown = false;
  for (let cluster = first; cluster < end; cluster++) {
    if (!c.refs.get(cluster)) continue;
    const blockIndex = Math.floor(cluster / s.refcountBlockSize);
    const blockStart = blockIndex * s.refcountBlockSize;
    let blockOffset: number;
    if (reftable.entries > blockIndex && reftableOffset(reftable.table, blockIndex)) {
      blockOffset = reftableOffset(reftable.table, blockIndex);
    } else {
      if (free.first < blockStart) free.first = blockStart;
      blockOffset = allocInMemory(c, 1, free);
      const blockCluster = blockOffset / s.clusterSize;
      if (blockCluster >= end) end = blockCluster + 1;
      if (reftable.entries <= blockIndex) {
        const entries = Math.ceil(((blockIndex + 1) * 8) / s.clusterSize) * s.clusterSize / 8;
        const table = makeTable(new Uint8Array(entries * 8));
        table.data.set(reftable.table.data);
        reftable.table = table;
        reftable.entries = entries;
        grown = true;
      }
      setReftableOffset(reftable.table, blockIndex, blockOffset);
    }
    await writeRebuilt(s, blockOffset, encodeRefblock(c, blockIndex), 'ERROR writing refblock');
    cluster = blockStart + s.refcountBlockSize - 1;
  }
  return grown;
}

/** Replace the refcount structure with one built from the computed refcounts. */
async function rebuildRefcountStructure(c: Checker): Promise<void> {
  const { s } = c;
  await s.refcountCache.empty();
  const reftable = { table: makeTable(new Uint8Array(0)), entries: 0 };
  let changed = await writeRefblocks(c, 0, c.refs.size, reftable);
  let tableOffset = 0;
  let tableClusters = 0;
  do {
    tableClusters = sizeToClusters(s, reftable.entries * 8);
    tableOffset = allocInMemory(c, tableClusters, { first: 0 });
    const start = tableOffset / s.clusterSize;
    changed = await writeRefblocks(c, start, start + tableClusters, reftable);
    if (changed) for (let i = start; i < start + tableClusters; i++) c.refs.set(i, 0);
  } while (changed);

  await writeRebuilt(s, tableOffset, reftable.table.data, 'ERROR writing reftable');
  const pointer = new Uint8Array(12);
  const view = new DataView(pointer.buffer);
  view.setBigUint64(0, BigInt(tableOffset));
  view.setUint32(8, tableClusters);
  try {
    await s.file.write(OFFSET_REFCOUNT_TABLE, 12, pointer);
    await s.file.flush();
  } catch (e) {
    throw errnoError('ERROR setting reftable', e);
  }
  s.refcountTable = reftable.table;
  s.refcountTableOffset = tableOffset;
  s.refcountTableSize = reftable.entries;
  s.header.refcountTableOffset = tableOffset;
  s.header.refcountTableClusters = tableClusters;
  updateMaxRefcountTableIndex(s);
}

async function checkRefcounts(s: Qcow2State, res: CheckResult, fix: number, report: Report): Promise<void> {
  const fileSize = s.file.getLength();
  const c: Checker = { s, res, fix, report, refs: new ReferenceCounts(sizeToClusters(s, fileSize)), rebuild: false };
  res.totalClusters = sizeToClusters(s, s.size);
  await calculateRefcounts(c);
  const before = { ...res };
  let highest = await compareRefcounts(c, 0);

  if (c.rebuild && fix & FIX_ERRORS) {
    const old = { ...res };
    report('Rebuilding refcount structure');
    try {
      await rebuildRefcountStructure(c);
    } catch (e) {
      s.node?.layer.warn(toBlkioError(e).message);
      throw e;
    }
    res.corruptions = 0;
    res.leaks = 0;
    c.rebuild = false;
    c.refs = new ReferenceCounts(sizeToClusters(s, s.file.getLength()));
    await calculateRefcounts(c);
    let freshLeaks = 0;
    if (fix & FIX_LEAKS) {
      const saved = { ...res };
      Object.assign(res, emptyResult());
      highest = await compareRefcounts(c, FIX_LEAKS);
      if (c.rebuild) report('ERROR rebuilt refcount structure is still broken');
      freshLeaks = res.leaks;
      Object.assign(res, saved);
    }
    if (res.corruptions < old.corruptions) res.corruptionsFixed += old.corruptions - res.corruptions;
    if (res.leaks < old.leaks) res.leaksFixed += old.leaks - res.leaks;
    res.leaks += freshLeaks;
  } else if (fix) {
    if (c.rebuild) {
      report('ERROR need to rebuild refcount structures');
      res.checkErrors++;
      throw new BlkioError('EIO');
    }
    if (res.leaks || res.corruptions) {
      Object.assign(res, before);
      highest = await compareRefcounts(c, fix);
    }
  }
  await checkOflagCopied(c);
  res.imageEndOffset = (highest + 1) * s.clusterSize;
}

/**
 * The snapshot table, which an open for the check leaves alone: errors end the check, reported
 * the check's way (QEMU's error_report lines get the program name from `error`).
 */
async function loadSnapshotTable(s: Qcow2State, report: Report, error: Report): Promise<void> {
  try {
    validateSnapshotTable(s.header, s.clusterSize, 'snapshot table');
  } catch (e) {
    const err = toBlkioError(e);
    error(`ERROR ${err.message}`);
    const overhanging = s.header.nbSnapshots - MAX_SNAPSHOTS;
    if (overhanging > 0) report(`You can force-remove all ${overhanging} overhanging snapshots with qemu-img check -r all`);
    throw new BlkioError(err.code);
  }
  try {
    await readSnapshotTable(s);
  } catch (e) {
    const err = toBlkioError(e);
    error(`ERROR failed to read the snapshot table: ${err.message}`);
    for (const hint of err.hints) report(hint);
    throw new BlkioError(err.code);
  }
}

/** Entries of a v3 image must carry the extra data up to the disk size. Returns the corruptions found. */
function checkSnapshotEntries(s: Qcow2State, fix: number, report: Report): number {
  if (s.header.version < 3) return 0;
  let corruptions = 0;
  s.snapshots.forEach((sn, i) => {
    if (sn.extraDataSize < MIN_V3_EXTRA_DATA) {
      report(`${fix & FIX_ERRORS ? 'Repairing' : 'ERROR'} snapshot table entry ${i} is incomplete`);
      corruptions++;
    }
  });
  return corruptions;
}

/** With -r all, a table with incomplete entries is written anew: every entry gets all extra data. */
async function fixSnapshotTable(s: Qcow2State, res: CheckResult, corruptions: number, fix: number, report: Report): Promise<void> {
  if (!corruptions || !(fix & FIX_ERRORS)) {
    res.corruptions += corruptions;
    return;
  }
  try {
    await writeSnapshotTable(s, s.snapshots);
  } catch (e) {
    res.corruptions += corruptions;
    res.checkErrors++;
    report(`ERROR failed to update snapshot table: ${toBlkioError(e).strerror}`);
    throw e;
  }
  res.corruptionsFixed += corruptions;
}

/** The check (and with `repair` the repair) of an open image. */
export async function checkImage(s: Qcow2State, repair: 'leaks' | 'all' | undefined, report: Report): Promise<CheckResult> {
  const fix = repair === 'all' ? FIX_LEAKS | FIX_ERRORS : repair === 'leaks' ? FIX_LEAKS : 0;
  const res = emptyResult();
  return s.lock.run(async () => {
    const layer = s.node?.layer;
    if (layer?.openForCheck) await loadSnapshotTable(s, report, (line) => layer.warn(line));
    const snapshotCorruptions = checkSnapshotEntries(s, fix, report);
    await checkRefcounts(s, res, fix, report);
    await fixSnapshotTable(s, res, snapshotCorruptions, fix, report);
    if (fix && res.checkErrors === 0 && res.corruptions === 0) {
      await markClean(s);
      await markConsistent(s);
    }
    return res;
  });
}
