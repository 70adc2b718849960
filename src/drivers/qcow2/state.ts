/**
 * The per-image state of an open qcow2 image, the geometry derived from its header, and the
 * lock that serialises metadata updates (requests run concurrently; only the data transfers
 * happen outside it).
 */
import { BlkioError } from '../../errors.js';
import type { BdrvChild } from '../../block/child.js';
import type { BlockNode } from '../../block/node.js';
import type { TableCache } from './cache.js';
import type { Snapshot } from './snapshots.js';
import type { BitmapDirectoryLocation } from './bitmaps.js';
import type { Qcow2Encryption } from './crypto.js';
import { refcountMax, type Table } from './entries.js';
import {
  AUTOCLEAR_DATA_FILE_RAW, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_EXTL2, OFFSET_INCOMPATIBLE,
  type HeaderExtension, type Qcow2Header,
} from './header.js';
import type { Mutex } from '../../block/mutex.js';

/** Why clusters are freed; each kind may or may not be passed down as a discard to the file. */
export type DiscardType = 'never' | 'always' | 'request' | 'snapshot' | 'other';

/** A guest range being allocated whose L2 entries are not written yet (QEMU's QCowL2Meta). */
export interface Allocation {
  /** Guest offset of the first cluster. */
  offset: number;
  /** Host offset of the first newly allocated (or kept) cluster. */
  hostOffset: number;
  nbClusters: number;
  keepOldClusters: boolean;
  /** Region of the first cluster before the write to copy from the old contents, relative to `offset`. */
  cowStart: { offset: number; bytes: number };
  /** Region after the write to copy, relative to `offset`. */
  cowEnd: { offset: number; bytes: number };
  /** Preallocation: no guest data, and the L2 subcluster bitmap is left as it was. */
  prealloc: boolean;
  /** The COW regions were zeroed in the file already. */
  skipCow: boolean;
  /** Guest data written together with the COW regions (QEMU's merge_cow). */
  data?: Uint8Array;
  done: Promise<void>;
  finish: () => void;
}

export interface Qcow2State {
  /** The node when opened as one (absent while creating an image). */
  node?: BlockNode;
  file: BdrvChild;
  /** Where guest data clusters live: the external data file, or `file` itself. */
  dataFile: BdrvChild;
  /** The external data file's name as the header extension records it. */
  dataFileName?: string;
  lock: Mutex;
  header: Qcow2Header;
  readOnly: boolean;

  clusterBits: number;
  clusterSize: number;
  extendedL2: boolean;
  subclusterBits: number;
  subclusterSize: number;
  subclustersPerCluster: number;
  /** Bytes per L2 entry: 8, or 16 with extended L2. */
  l2EntrySize: number;
  /** Entries per L2 table. */
  l2Size: number;
  l2Bits: number;
  /** Entries per cached L2 slice. */
  l2SliceSize: number;
  refcountOrder: number;
  refcountMax: number;
  refcountBlockBits: number;
  refcountBlockSize: number;
  csizeShift: number;
  csizeMask: number;

  /** Virtual size in bytes. */
  size: number;
  l1Size: number;
  l1TableOffset: number;
  l1Table: Table;
  l1VmStateIndex: number;
  refcountTableOffset: number;
  /** Entries in the refcount table. */
  refcountTableSize: number;
  refcountTable: Table;
  maxRefcountTableIndex: number;

  freeClusterIndex: number;
  freeByteOffset: number;
  /** The cluster of freeByteOffset was handed out whole since (see allocBytes). */
  freeByteClusterReused: boolean;
  l2Cache: TableCache;
  refcountCache: TableCache;
  discardPassthrough: Record<DiscardType, boolean>;
  /** Freed host ranges to discard in the file once the current operation is done. */
  pendingDiscards: Array<{ offset: number; bytes: number }>;
  cacheDiscards: boolean;
  lazyRefcounts: boolean;

  backingFile?: string;
  backingFormat?: string;
  unknownHeaderFields: Uint8Array;
  unknownExtensions: HeaderExtension[];
  /** The persistent bitmap directory (absent without bitmaps, or when they are ignored). */
  bitmapDirectory?: BitmapDirectoryLocation;
  /** The crypto header extension (LUKS) as read, written back with the header. */
  cryptoExtension?: Uint8Array;
  /** Encrypted images: the data cipher (absent when opened without I/O). */
  encryption?: Qcow2Encryption;
  /** Encrypted images: the `encrypt` member of qemu-img info. */
  encryptionInfo?: Record<string, unknown>;
  snapshots: Snapshot[];
  snapshotsSize: number;
  inflight: Set<Allocation>;
  signaledCorruption: boolean;
  /** Checked on the first block-status query: most referenced clusters were never written. */
  metadataPreallocation?: boolean;
  /** Set after fatal corruption: every request fails (QEMU drops the driver). */
  unusable: boolean;
  /**
   * Repair of an image left dirty (lazy refcounts), run before the first request: QEMU repairs
   * at open unless the open is qemu-img check's, which blkio's open cannot tell apart.
   */
  pendingRepair?: () => Promise<void>;
  repair?: Promise<void>;
}

/** The geometry every qcow2 calculation uses, from validated header fields. */
export function geometry(h: Qcow2Header) {
  const clusterBits = h.clusterBits;
  const clusterSize = 2 ** clusterBits;
  const extendedL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  const subclustersPerCluster = extendedL2 ? 32 : 1;
  const subclusterSize = clusterSize / subclustersPerCluster;
  const l2EntrySize = extendedL2 ? 16 : 8;
  const l2Bits = clusterBits - Math.log2(l2EntrySize);
  const csizeShift = 62 - (clusterBits - 8);
  return {
    clusterBits, clusterSize, extendedL2, subclustersPerCluster, subclusterSize,
    subclusterBits: Math.log2(subclusterSize),
    l2EntrySize, l2Bits, l2Size: 2 ** l2Bits,
    refcountOrder: h.refcountOrder,
    refcountMax: refcountMax(h.refcountOrder),
    refcountBlockBits: clusterBits - (h.refcountOrder - 3),
    refcountBlockSize: 2 ** (clusterBits - (h.refcountOrder - 3)),
    csizeShift,
    csizeMask: 2 ** (clusterBits - 8) - 1,
  };
}

export function sizeToClusters(s: { clusterSize: number }, bytes: number): number {
  return Math.ceil(bytes / s.clusterSize);
}

export function offsetIntoCluster(s: { clusterSize: number }, offset: number): number {
  return offset % s.clusterSize;
}

export function startOfCluster(s: { clusterSize: number }, offset: number): number {
  return offset - (offset % s.clusterSize);
}

/** Where the VM state starts in guest address space: the first L1 entry past the virtual disk. */
export function vmStateOffset(s: Qcow2State): number {
  return s.l1VmStateIndex * 2 ** (s.clusterBits + s.l2Bits);
}

/** Entries the L1 table needs for `size` guest bytes. */
export function sizeToL1(s: { clusterBits: number; l2Bits: number }, size: number): number {
  return Math.ceil(size / 2 ** (s.clusterBits + s.l2Bits));
}

/**
 * Guest data lives in an external data file at host offset == guest offset; its clusters are
 * not refcounted.
 */
export function hasDataFile(s: Qcow2State): boolean {
  return (s.header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
}

/** The external data file is kept a valid raw image of the guest disk (zero writes go through too). */
export function dataFileIsRaw(s: Qcow2State): boolean {
  return (s.header.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n;
}

export function needAccurateRefcounts(s: Qcow2State): boolean {
  return (s.header.incompatibleFeatures & INCOMPAT_DIRTY) === 0n;
}

/** Write the incompatible feature bits in place, flushed (QEMU's mark dirty / corrupt). */
async function writeIncompatible(s: Qcow2State, features: bigint): Promise<void> {
  // A version 2 header has no feature fields (its extensions start there): the bits stay in memory.
  if (s.header.version >= 3) {
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setBigUint64(0, features);
    await s.file.write(OFFSET_INCOMPATIBLE, 8, buf);
    await s.file.flush();
  }
  s.header.incompatibleFeatures = features;
}

export async function markDirty(s: Qcow2State): Promise<void> {
  if (s.header.incompatibleFeatures & INCOMPAT_DIRTY) return;
  await writeIncompatible(s, s.header.incompatibleFeatures | INCOMPAT_DIRTY);
}

/**
 * Metadata found inconsistent: print QEMU's message, and for fatal cases set the corrupt bit
 * (once) and make the image unusable for writes.
 */
export async function signalCorruption(s: Qcow2State, fatalIfWritable: boolean, message: string): Promise<BlkioError> {
  // A read-only image is not marked, and stays usable.
  const fatal = fatalIfWritable && !s.readOnly;
  const corrupt = (s.header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n;
  if (!(s.signaledCorruption && (!fatal || corrupt))) {
    writeStderr(fatal
      ? `qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed\n`
      : `qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed\n`);
    s.signaledCorruption = true;
    if (fatal && !corrupt) {
      // The whole header is written again, as QEMU's qcow2_mark_corrupt does (extensions a
      // damaged header lost or misplaced come back as the image state has them). Loaded on
      // demand: open.js builds on this module.
      s.header.incompatibleFeatures |= INCOMPAT_CORRUPT;
      const { updateHeader } = await import('./open.js');
      await updateHeader(s).then(() => s.file.flush()).catch(() => {});
    }
  }
  if (fatal) s.unusable = true;
  return new BlkioError('EIO');
}

/** Diagnostics QEMU prints with a bare fprintf(stderr) (no program name). */
export function writeStderr(text: string): void {
  (globalThis as { process?: { stderr?: { write(t: string): void } } }).process?.stderr?.write(text);
}

/** printf's `%#x`: no `0x` on zero. */
export function hex(n: number | bigint): string {
  return !n ? '0' : '0x' + n.toString(16);
}
