/**
 * qcow2 internal snapshots: the snapshot table (read with QEMU's limits and texts, written where
 * and how QEMU writes it so host offsets match), and creating, applying (reverting to) and
 * deleting snapshots. A snapshot is a copy of the active L1 table; every cluster it reaches
 * gains a reference, so shared clusters lose their COPIED flags and writes copy them first.
 */
import { BlkioError, toBlkioError } from '../../errors.js';
import type { SnapshotInfo } from '../../block/driver.js';
import { getHi, getLo, HI_COPIED, entryOffset, makeTable, set64, type Table } from './entries.js';
import { ClusterType, clusterType, growL1Table, MAX_L1_SIZE, readL2, writeL2 } from './mapping.js';
import { latin1CString } from '../../byte-strings.js';
import {
  adjustRefcount, allocClusters, compressedDescriptor, freeClusters, freeOrReport, getClusterRefcount, processDiscards,
} from './refcount.js';
import { hex, offsetIntoCluster, signalCorruption, type Qcow2State } from './state.js';
import { truncateImage } from './truncate.js';

export const MAX_SNAPSHOTS = 65536;
export const SNAPSHOT_HEADER_SIZE = 40;
/** Header fields nb_snapshots (4 bytes) and snapshots_offset (8 bytes), adjacent. */
const OFFSET_NB_SNAPSHOTS = 60;
/** Extra data one entry may carry (QCOW_MAX_SNAPSHOT_EXTRA_DATA). */
const MAX_EXTRA_DATA = 1024;
/** Largest snapshot table (QCOW_MAX_SNAPSHOTS_SIZE). */
const MAX_TABLE_BYTES = 1024 * MAX_SNAPSHOTS;
/** Extra data fields QEMU 7.2 knows and writes: vm_state_size_large, disk_size, icount. */
const KNOWN_EXTRA_SIZE = 24;
/** Extra data v3 requires: vm_state_size_large and disk_size. */
export const SNAPSHOT_SIZES_EXTRA_SIZE = 16;
/** icount of snapshots taken without instruction counting (and of entries too old to say). */
export const NO_ICOUNT = 2n ** 64n - 1n;

/**
 * One entry of the snapshot table. `id` and `name` are byte strings (one char per byte, cut at
 * the first NUL as QEMU's C strings are), so they are written back unchanged.
 */
export interface Snapshot {
  l1TableOffset: number;
  /** The L1 offset exactly, where a corrupt entry puts it beyond 2^53 (for check and rewrites). */
  exactL1TableOffset?: bigint;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  vmStateSize: bigint;
  diskSize: bigint;
  icount: bigint;
  /** Size of the extra data as stored (at least what QEMU writes, KNOWN_EXTRA_SIZE, once rewritten). */
  extraDataSize: number;
  /** Extra data beyond the known fields, kept for rewriting. */
  unknownExtraData: Uint8Array;
}

type ReadAt = (offset: number, bytes: number) => Promise<Uint8Array>;

/**
 * Parse `count` entries of the table at `start` (QEMU's qcow2_read_snapshots). Entries without
 * a disk size (extra data too short) get `virtualSize`. Returns the entries and the table size.
 */
export async function parseSnapshotTable(
  read: ReadAt, start: number, count: number, virtualSize: number,
): Promise<{ snapshots: Snapshot[]; size: number }> {
  const snapshots: Snapshot[] = [];
  let offset = start;
  for (let i = 0; i < count; i++) {
    offset = Math.ceil(offset / 8) * 8;
    const headBytes = await read(offset, SNAPSHOT_HEADER_SIZE);
    const head = new DataView(headBytes.buffer, headBytes.byteOffset, headBytes.byteLength);
    offset += SNAPSHOT_HEADER_SIZE;
    const idSize = head.getUint16(12);
    const nameSize = head.getUint16(14);
    const extraDataSize = head.getUint32(36);
    if (extraDataSize > MAX_EXTRA_DATA) {
      throw new BlkioError('EFBIG', `Too much extra metadata in snapshot table entry ${i}`,
        ['You can force-remove this extra metadata with qemu-img check -r all']);
    }
    const knownBytes = Math.min(KNOWN_EXTRA_SIZE, extraDataSize);
    const extra = new Uint8Array(KNOWN_EXTRA_SIZE);
    extra.set(await read(offset, knownBytes));
    offset += knownBytes;
    const extraView = new DataView(extra.buffer);
    let unknownExtraData: Uint8Array = new Uint8Array(0);
    if (extraDataSize > KNOWN_EXTRA_SIZE) {
      unknownExtraData = await read(offset, extraDataSize - KNOWN_EXTRA_SIZE);
      offset += unknownExtraData.length;
    }
    const strings = await read(offset, idSize + nameSize);
    offset += idSize + nameSize;
    const l1TableOffset = head.getBigUint64(0);
    snapshots.push({
      l1TableOffset: Number(l1TableOffset),
      ...(l1TableOffset > BigInt(Number.MAX_SAFE_INTEGER) ? { exactL1TableOffset: l1TableOffset } : {}),
      l1Size: head.getUint32(8),
      id: latin1CString(strings.subarray(0, idSize)),
      name: latin1CString(strings.subarray(idSize)),
      dateSec: head.getUint32(16),
      dateNsec: head.getUint32(20),
      vmClockNsec: head.getBigUint64(24),
      vmStateSize: extraDataSize >= 8 ? extraView.getBigUint64(0) : BigInt(head.getUint32(32)),
      diskSize: extraDataSize >= 16 ? extraView.getBigUint64(8) : BigInt(virtualSize),
      icount: extraDataSize >= 24 ? extraView.getBigUint64(16) : NO_ICOUNT,
      extraDataSize,
      unknownExtraData,
    });
    if (offset - start > MAX_TABLE_BYTES) {
      throw new BlkioError('EFBIG', 'Snapshot table is too big',
        ['Prune snapshots with qemu-img snapshot -d (or with qemu-img check -r all)']);
    }
  }
  return { snapshots, size: offset - start };
}

/** The on-disk size of one entry, from its 8-byte aligned start. */
function entrySize(sn: Snapshot): number {
  return SNAPSHOT_HEADER_SIZE + Math.max(KNOWN_EXTRA_SIZE, sn.extraDataSize) + sn.id.length + sn.name.length;
}

/** Bytes of the table holding `snapshots` (entries start 8-byte aligned). */
export function snapshotTableSize(snapshots: readonly Snapshot[]): number {
  let size = 0;
  for (const sn of snapshots) size = Math.ceil(size / 8) * 8 + entrySize(sn);
  return size;
}

/** One entry as QEMU writes it: the known extra fields always, the unknown ones kept. */
export function encodeSnapshot(sn: Snapshot): Uint8Array {
  const extraSize = Math.max(KNOWN_EXTRA_SIZE, sn.extraDataSize);
  const buf = new Uint8Array(entrySize(sn));
  const v = new DataView(buf.buffer);
  v.setBigUint64(0, sn.exactL1TableOffset ?? BigInt(sn.l1TableOffset));
  v.setUint32(8, sn.l1Size);
  v.setUint16(12, sn.id.length);
  v.setUint16(14, sn.name.length);
  v.setUint32(16, sn.dateSec);
  v.setUint32(20, sn.dateNsec);
  v.setBigUint64(24, sn.vmClockNsec);
  // A VM state beyond 32 bits reads as none to older implementations, not as a truncated one.
  if (sn.vmStateSize <= 0xffffffffn) v.setUint32(32, Number(sn.vmStateSize));
  v.setUint32(36, extraSize);
  v.setBigUint64(40, sn.vmStateSize);
  v.setBigUint64(48, sn.diskSize);
  v.setBigUint64(56, sn.icount);
  let pos = SNAPSHOT_HEADER_SIZE + KNOWN_EXTRA_SIZE;
  buf.set(sn.unknownExtraData, pos);
  pos += sn.unknownExtraData.length;
  buf.set(Buffer.from(sn.id + sn.name, 'latin1'), pos);
  return buf;
}

async function flushMetadata(s: Qcow2State): Promise<void> {
  await s.l2Cache.flush();
  await s.refcountCache.flush();
}

/**
 * Write `snapshots` as a new table in freshly allocated clusters, switch the header to it and
 * free the old one (QEMU's qcow2_write_snapshots; an empty table still gets an offset: the
 * next free cluster).
 */
export async function writeSnapshotTable(s: Qcow2State, snapshots: Snapshot[]): Promise<void> {
  const size = snapshotTableSize(snapshots);
  if (size > MAX_TABLE_BYTES) throw new BlkioError('EFBIG');
  const tableOffset = await allocClusters(s, size);
  try {
    await flushMetadata(s);
    let offset = tableOffset;
    // Entry by entry: the alignment padding between entries is left as it is, as QEMU leaves it.
    for (const sn of snapshots) {
      offset = Math.ceil(offset / 8) * 8;
      const entry = encodeSnapshot(sn);
      await s.file.write(offset, entry.length, entry);
      offset += entry.length;
    }
    await flushMetadata(s);
    const pointer = new Uint8Array(12);
    const view = new DataView(pointer.buffer);
    view.setUint32(0, snapshots.length);
    view.setBigUint64(4, BigInt(tableOffset));
    await s.file.write(OFFSET_NB_SNAPSHOTS, pointer.length, pointer);
    await s.file.flush();
  } catch (e) {
    await freeOrReport(s, tableOffset, size, 'always');
    throw e;
  }
  const oldOffset = s.header.snapshotsOffset;
  const oldSize = s.snapshotsSize;
  s.snapshots = snapshots.map((sn) => ({ ...sn, extraDataSize: Math.max(KNOWN_EXTRA_SIZE, sn.extraDataSize) }));
  s.header.nbSnapshots = snapshots.length;
  s.header.snapshotsOffset = tableOffset;
  s.snapshotsSize = size;
  await freeOrReport(s, oldOffset, oldSize, 'snapshot');
}

/** Change the reference count of each cluster of `[offset, offset + bytes)` by one. */
async function changeRefcounts(s: Qcow2State, offset: number, bytes: number, addend: 1 | -1): Promise<void> {
  if (addend < 0) {
    await freeClusters(s, offset, bytes, 'snapshot');
    return;
  }
  const last = Math.floor((offset + bytes - 1) / s.clusterSize);
  for (let index = Math.floor(offset / s.clusterSize); index <= last; index++) {
    await adjustRefcount(s, index * s.clusterSize, 1, false);
  }
}

/** The COPIED flag a table entry should carry for a cluster with this refcount. */
function withCopied(hi: number, refcount: number): number {
  return (refcount === 1 ? hi | HI_COPIED : hi & ~HI_COPIED) >>> 0;
}

/**
 * Add `addend` (+1, -1 or 0) to the refcount of every cluster the L1 table at `l1Offset` reaches
 * (its L2 tables and their data), and set the COPIED flags of its L1 and L2 entries to what the
 * refcounts are now (QEMU's qcow2_update_snapshot_refcount). The active table is used from
 * memory, so applying a snapshot can drop the old tables after overwriting them on disk.
 */
async function updateSnapshotRefcount(s: Qcow2State, l1Offset: number, l1Size: number, addend: -1 | 0 | 1): Promise<void> {
  const l1 = l1Offset === s.l1TableOffset ? s.l1Table : await readL1Table(s, l1Offset, l1Size);
  let l1Modified = false;
  let succeeded = false;
  s.cacheDiscards = true;
  try {
    for (let i = 0; i < l1Size; i++) {
      const l1Hi = getHi(l1, i);
      const l2Offset = entryOffset(l1Hi, getLo(l1, i));
      if (!l2Offset) continue;
      if (offsetIntoCluster(s, l2Offset)) {
        throw await signalCorruption(s, true, `L2 table offset ${hex(l2Offset)} unaligned (L1 index: ${hex(i)})`);
      }
      const sliceBytes = s.l2SliceSize * s.l2EntrySize;
      for (let slicePos = 0; slicePos < s.clusterSize; slicePos += sliceBytes) {
        const slice = await s.l2Cache.get(l2Offset + slicePos);
        try {
          for (let j = 0; j < s.l2SliceSize; j++) {
            await updateL2Entry(s, slice, j, addend, l2Offset, slicePos / s.l2EntrySize + j);
          }
        } finally {
          s.l2Cache.put(slice);
        }
      }
      if (addend) await changeRefcounts(s, l2Offset, 1, addend);
      const refcount = await getClusterRefcount(s, l2Offset / s.clusterSize);
      const hi = withCopied(l1Hi, refcount);
      if (hi !== l1Hi) {
        set64(l1, i, hi, getLo(l1, i));
        l1Modified = true;
      }
    }
    await flushMetadata(s);
    succeeded = true;
  } finally {
    s.cacheDiscards = false;
    await processDiscards(s, succeeded);
  }
  // A table about to be freed (addend -1) keeps its stale flags.
  if (addend >= 0 && l1Modified) {
    await s.file.write(l1Offset, l1.data.length, l1.data);
    await s.file.flush();
  }
}

async function updateL2Entry(s: Qcow2State, slice: Table, j: number, addend: -1 | 0 | 1, l2Offset: number, l2Index: number): Promise<void> {
  const e = readL2(s, slice, j);
  let refcount = 0;
  switch (clusterType(s, e)) {
    case ClusterType.Compressed: {
      if (addend) {
        const { offset, size } = compressedDescriptor(s, e.hi & ~HI_COPIED, e.lo);
        await changeRefcounts(s, offset, size, addend);
      }
      // Compressed clusters are never written in place.
      refcount = 2;
      break;
    }
    case ClusterType.Normal:
    case ClusterType.ZeroAlloc: {
      const offset = entryOffset(e.hi, e.lo);
      if (offsetIntoCluster(s, offset)) {
        throw await signalCorruption(s, true,
          `Cluster allocation offset ${hex(offset)} unaligned (L2 offset: ${hex(l2Offset)}, L2 index: ${hex(l2Index)})`);
      }
      if (addend) await changeRefcounts(s, offset, 1, addend);
      refcount = await getClusterRefcount(s, offset / s.clusterSize);
      break;
    }
    default:
      break;
  }
  const hi = withCopied(e.hi, refcount);
  if (hi === e.hi >>> 0) return;
  // New references must reach the disk before entries that rely on them.
  if (addend > 0) await s.l2Cache.setDependency(s.refcountCache);
  writeL2(s, slice, j, { ...e, hi });
  s.l2Cache.markDirty(slice);
}

/** strtoul(id, NULL, 10): leading blanks, a sign, digits; saturating, negatives wrap around. */
function idNumber(id: string): bigint {
  const m = /^[ \t\n\v\f\r]*([+-]?)(\d+)/.exec(id);
  if (!m) return 0n;
  const max = 2n ** 64n - 1n;
  let value = BigInt(m[2]);
  if (value > max) return max;
  if (m[1] === '-') value = BigInt.asUintN(64, -value);
  return value;
}

/** The next ID: one more than the largest numeric ID (QEMU's find_new_snapshot_id). */
function newSnapshotId(snapshots: readonly Snapshot[]): string {
  let max = 0n;
  for (const sn of snapshots) {
    const n = idNumber(sn.id);
    if (n > max) max = n;
  }
  return BigInt.asUintN(64, max + 1n).toString();
}

/** The first snapshot with this ID and this name (either may be left open). */
function findSnapshot(s: Qcow2State, id: string | undefined, name: string | undefined): Snapshot | undefined {
  return s.snapshots.find((sn) => (id === undefined || sn.id === id) && (name === undefined || sn.name === name));
}

/** QEMU's qcow2_validate_table for a snapshot's L1 table. */
export function validateSnapshotL1(s: Qcow2State, sn: Snapshot): void {
  if (sn.l1Size > MAX_L1_SIZE / 8) throw new BlkioError('EFBIG', 'Snapshot L1 table too large');
  const unaligned = (sn.exactL1TableOffset ?? BigInt(sn.l1TableOffset)) % BigInt(s.clusterSize) !== 0n;
  if (2 ** 63 - sn.l1Size * 8 < sn.l1TableOffset || unaligned) {
    throw new BlkioError('EINVAL', 'Snapshot L1 table offset invalid');
  }
}

/** A snapshot's L1 table read from the image, in a table of `entries` entries (those past its own are zero). */
export function readSnapshotL1(s: Qcow2State, sn: Snapshot, entries = sn.l1Size): Promise<Table> {
  return readL1Table(s, sn.l1TableOffset, sn.l1Size, entries);
}

/** The L1 table of `l1Size` entries at `offset`, in a table of `entries` entries (those past its own are zero). */
async function readL1Table(s: Qcow2State, offset: number, l1Size: number, entries = l1Size): Promise<Table> {
  const table = makeTable(new Uint8Array(entries * 8));
  await s.file.read(offset, l1Size * 8, table.data.subarray(0, l1Size * 8));
  return table;
}

export function listSnapshots(s: Qcow2State): SnapshotInfo[] {
  return s.snapshots.map((sn) => ({
    id: sn.id, name: sn.name, vmStateSize: sn.vmStateSize, dateSec: sn.dateSec, dateNsec: sn.dateNsec,
    vmClockNsec: sn.vmClockNsec, icount: sn.icount === NO_ICOUNT ? undefined : sn.icount,
  }));
}

/** Take a snapshot of the active L1 table (the ID is generated). */
export async function createSnapshot(s: Qcow2State, info: Omit<SnapshotInfo, 'id'>): Promise<void> {
  await s.lock.run(async () => {
    if (s.snapshots.length >= MAX_SNAPSHOTS) throw new BlkioError('EFBIG');
    const l1Bytes = s.l1Size * 8;
    const l1TableOffset = await allocClusters(s, l1Bytes);
    const sn: Snapshot = {
      l1TableOffset, l1Size: s.l1Size, id: newSnapshotId(s.snapshots), name: info.name,
      dateSec: info.dateSec, dateNsec: info.dateNsec, vmClockNsec: info.vmClockNsec, vmStateSize: info.vmStateSize,
      diskSize: BigInt(s.size), icount: info.icount ?? NO_ICOUNT, extraDataSize: KNOWN_EXTRA_SIZE,
      unknownExtraData: new Uint8Array(0),
    };
    if (l1Bytes) await s.file.write(l1TableOffset, l1Bytes, s.l1Table.data.subarray(0, l1Bytes));
    // Every cluster gains its reference (stable on disk) before the table points at the copy.
    await updateSnapshotRefcount(s, s.l1TableOffset, s.l1Size, 1);
    await writeSnapshotTable(s, [...s.snapshots, sn]);
  });
}

/**
 * Revert the active L1 table to a snapshot's (found by ID, else by name), resizing the image to
 * the snapshot's disk size first. `report` prints what QEMU reports on its own before failing
 * with the plain errno.
 */
export async function gotoSnapshot(s: Qcow2State, idOrName: string, report: (line: string) => void): Promise<void> {
  const sn = findSnapshot(s, idOrName, undefined) ?? findSnapshot(s, undefined, idOrName);
  if (!sn) throw new BlkioError('ENOENT');
  try {
    validateSnapshotL1(s, sn);
    if (sn.diskSize !== BigInt(s.size)) await truncateImage(s, Number(sn.diskSize), 'off');
  } catch (e) {
    const err = toBlkioError(e);
    report(err.message);
    throw new BlkioError(err.code);
  }
  await s.lock.run(async () => {
    await growL1Table(s, sn.l1Size, true);
    const table = await readSnapshotL1(s, sn, s.l1Size);
    // The snapshot's clusters gain their references before the active table points at them.
    await updateSnapshotRefcount(s, sn.l1TableOffset, sn.l1Size, 1);
    await s.file.write(s.l1TableOffset, table.data.length, table.data);
    await s.file.flush();
    try {
      // Drops the old tables' references: the in-memory table still holds them.
      await updateSnapshotRefcount(s, s.l1TableOffset, s.l1Size, -1);
    } finally {
      s.l1Table.data.set(table.data);
    }
    await updateSnapshotRefcount(s, s.l1TableOffset, s.l1Size, 0);
  });
}

/** Delete the snapshot with this ID and name: its table entry, its references, its L1 table. */
export async function deleteSnapshot(s: Qcow2State, id: string, name: string): Promise<void> {
  await s.lock.run(async () => {
    const sn = findSnapshot(s, id, name);
    if (!sn) throw new BlkioError('ENOENT', "Can't find the snapshot");
    validateSnapshotL1(s, sn);
    try {
      await writeSnapshotTable(s, s.snapshots.filter((x) => x !== sn));
    } catch (e) {
      const err = toBlkioError(e);
      throw new BlkioError(err.code, `Failed to remove snapshot from snapshot list: ${err.strerror}`);
    }
    try {
      await updateSnapshotRefcount(s, sn.l1TableOffset, sn.l1Size, -1);
    } catch (e) {
      const err = toBlkioError(e);
      throw new BlkioError(err.code, `Failed to free the cluster and L1 table: ${err.strerror}`);
    }
    await freeOrReport(s, sn.l1TableOffset, sn.l1Size * 8, 'snapshot');
    try {
      // Clusters now referenced only by the active table may be written in place again.
      await updateSnapshotRefcount(s, s.l1TableOffset, s.l1Size, 0);
    } catch (e) {
      const err = toBlkioError(e);
      throw new BlkioError(err.code, `Failed to update snapshot status in disk: ${err.strerror}`);
    }
  });
}

/**
 * Make a snapshot's L1 table the active one of a read-only image, so reads see the snapshot
 * (qemu-img convert -l); nothing is written.
 */
export async function loadSnapshotTemporarily(s: Qcow2State, id: string | undefined, name: string | undefined): Promise<void> {
  const sn = findSnapshot(s, id, name);
  if (!sn) throw new BlkioError('ENOENT', "Can't find snapshot");
  validateSnapshotL1(s, sn);
  const table = await readSnapshotL1(s, sn).catch((e) => {
    throw new BlkioError(toBlkioError(e).code, 'Failed to read l1 table for snapshot');
  });
  await s.lock.run(async () => {
    s.l1Table = table;
    s.l1Size = sn.l1Size;
    s.l1TableOffset = sn.l1TableOffset;
  });
}
