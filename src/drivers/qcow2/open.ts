/**
 * Opening a qcow2 image: header validation with QEMU's messages and order, runtime options
 * (cache sizes, lazy refcounts, discard passthrough, overlap checks), the L1 and refcount
 * tables, extensions, backing file name, snapshot table, and repair of a dirty image.
 */
import { BlkioError, errno, errnoError } from '../../errors.js';
import type { BdrvChild } from '../../block/child.js';
import { debugEvent, MAX_NODE_LENGTH } from '../../block/io.js';
import type { ParsedOptions } from '../../block/driver.js';
import { TableCache } from './cache.js';
import { makeTable } from './entries.js';
import {
  AUTOCLEAR_MASK, COMPAT_LAZY_REFCOUNTS, COMPRESSION_ZLIB, COMPRESSION_ZSTD, HEADER_MIN_V3, HEADER_SIZE_V3,
  INCOMPAT_COMPRESSION, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPAT_MASK, MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS, QCOW_MAGIC, BACKING_FILE_MAX, buildHeaderCluster, parseExtensions, parseHeader,
  unsupportedFeatureMessage, type Qcow2Header,
} from './header.js';
import { MAX_L1_SIZE } from './mapping.js';
import { MAX_REFTABLE_SIZE, updateMaxRefcountTableIndex } from './refcount.js';
import { MAX_SNAPSHOTS, parseSnapshotTable, SNAPSHOT_HEADER_SIZE } from './snapshots.js';
import { geometry, writeStderr, type Qcow2State } from './state.js';
import { Mutex } from '../../block/mutex.js';
import { cString } from '../../byte-strings.js';
import { decodeBitmapsExtension, encodeBitmapsExtension } from './bitmaps.js';
import { preventMetadataOverwrite } from './overlap.js';
import { checkEncryptOptions, openEncryption } from './encryption.js';
import type { FlatOptions } from '../../options/types.js';

const DEFAULT_L2_CACHE_MAX = 32 * 2 ** 20;
const MIN_L2_CACHE_ENTRIES = 2;
const MIN_REFCOUNT_CACHE_CLUSTERS = 4;
const DEFAULT_CACHE_CLEAN_INTERVAL = 600;

export const OVERLAP_CHECKS = [
  'main-header', 'active-l1', 'active-l2', 'refcount-table', 'refcount-block', 'snapshot-table', 'inactive-l1',
  'inactive-l2', 'bitmap-directory',
] as const;

/**
 * QEMU's size_to_l1 in its unsigned 64-bit arithmetic: a size within one L2 table's reach of
 * 2^64 wraps around to a small index (the open then fails on the sector count instead).
 */
function vmStateL1Index(g: { clusterBits: number; l2Bits: number }, size: bigint): number {
  const shift = BigInt(g.clusterBits + g.l2Bits);
  return Number(((size + (1n << shift) - 1n) & (2n ** 64n - 1n)) >> shift);
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** Validate the header fields in QEMU's order; `checkMode` is qemu-img check's relaxed open. */
export function validateHeader(h: Qcow2Header, magic: number): void {
  if (magic !== QCOW_MAGIC) throw invalid('Image is not in qcow2 format');
  if (h.version < 2 || h.version > 3) throw new BlkioError('ENOTSUP', `Unsupported qcow2 version ${h.version}`);
  if (h.clusterBits < MIN_CLUSTER_BITS || h.clusterBits > MAX_CLUSTER_BITS) {
    throw invalid(`Unsupported cluster size: 2^${h.clusterBits}`);
  }
  if (h.version >= 3 && h.headerLength < HEADER_MIN_V3) throw invalid('qcow2 header too short');
  const clusterSize = 2 ** h.clusterBits;
  if (h.headerLength > clusterSize) throw invalid('qcow2 header exceeds cluster size');
  if (h.backingFileOffset > clusterSize) throw invalid('Invalid backing file offset');
}

function validateCompressionType(h: Qcow2Header): void {
  if (h.compressionType !== COMPRESSION_ZLIB && h.compressionType !== COMPRESSION_ZSTD) {
    throw new BlkioError('ENOTSUP', `qcow2: unknown compression type: ${h.compressionType}`);
  }
  const bit = (h.incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n;
  if (h.compressionType === COMPRESSION_ZLIB && bit) {
    throw invalid('qcow2: Compression type incompatible feature bit must not be set');
  }
  if (h.compressionType !== COMPRESSION_ZLIB && !bit) {
    throw invalid('qcow2: Compression type incompatible feature bit must be set');
  }
}

/** QEMU's qcow2_validate_table: size limit and alignment of a table's offset. */
function validateTable(offset: number, entries: number, entryLen: number, maxBytes: number, clusterSize: number, name: string): void {
  if (entries > maxBytes / entryLen) throw new BlkioError('EFBIG', `${name} too large`);
  const size = entries * entryLen;
  if (!Number.isFinite(offset) || 2 ** 63 - size < offset || offset % clusterSize !== 0) {
    throw invalid(`${name} offset invalid`);
  }
}

export interface RuntimeOptions {
  l2CacheEntries: number;
  l2CacheEntrySize: number;
  refcountCacheClusters: number;
  lazyRefcounts: boolean;
  discardRequest: boolean;
  discardSnapshot: boolean;
  discardOther: boolean;
}

/** The runtime options QEMU's qcow2_update_options accepts, with its validation texts. */
export function runtimeOptions(s: Pick<Qcow2State, 'clusterSize' | 'size' | 'l2EntrySize' | 'header'>, opts: ParsedOptions, discardUnmap: boolean): RuntimeOptions {
  const combined = opts['cache-size'] as number | undefined;
  const l2Set = opts['l2-cache-size'] as number | undefined;
  const refcountSet = opts['refcount-cache-size'] as number | undefined;
  const entrySizeSet = opts['l2-cache-entry-size'] as number | undefined;
  const minRefcountCache = MIN_REFCOUNT_CACHE_CLUSTERS * s.clusterSize;
  const maxL2Entries = Math.ceil(s.size / s.clusterSize);
  const maxL2Cache = Math.ceil((maxL2Entries * s.l2EntrySize) / s.clusterSize) * s.clusterSize;
  let l2CacheSize = Math.min(maxL2Cache, l2Set ?? DEFAULT_L2_CACHE_MAX);
  let refcountCacheSize = refcountSet ?? 0;
  let entrySize = entrySizeSet ?? s.clusterSize;

  if (combined !== undefined) {
    if (l2Set !== undefined && refcountSet !== undefined) {
      throw invalid('cache-size, l2-cache-size and refcount-cache-size may not be set at the same time');
    } else if (l2Set !== undefined && l2Set > combined) {
      throw invalid('l2-cache-size may not exceed cache-size');
    } else if (refcountCacheSize > combined) {
      throw invalid('refcount-cache-size may not exceed cache-size');
    }
    if (l2Set !== undefined) {
      refcountCacheSize = combined - l2CacheSize;
    } else if (refcountSet !== undefined) {
      l2CacheSize = combined - refcountCacheSize;
    } else if (combined >= maxL2Cache + minRefcountCache) {
      l2CacheSize = maxL2Cache;
      refcountCacheSize = combined - l2CacheSize;
    } else {
      refcountCacheSize = Math.min(combined, minRefcountCache);
      l2CacheSize = combined - refcountCacheSize;
    }
  }
  if (l2CacheSize < maxL2Cache && entrySizeSet === undefined) entrySize = Math.min(s.clusterSize, 4096);
  if (entrySize < 512 || entrySize > s.clusterSize || (entrySize & (entrySize - 1)) !== 0) {
    throw invalid(`L2 cache entry size must be a power of two between 512 and the cluster size (${s.clusterSize})`);
  }
  let l2CacheEntries = Math.floor(l2CacheSize / entrySize);
  if (l2CacheEntries < MIN_L2_CACHE_ENTRIES) l2CacheEntries = MIN_L2_CACHE_ENTRIES;
  if (l2CacheEntries > 0x7fffffff) throw invalid('L2 cache size too big');
  let refcountCacheClusters = Math.floor(refcountCacheSize / s.clusterSize);
  if (refcountCacheClusters < MIN_REFCOUNT_CACHE_CLUSTERS) refcountCacheClusters = MIN_REFCOUNT_CACHE_CLUSTERS;
  if (refcountCacheClusters > 0x7fffffff) throw invalid('Refcount cache size too big');

  const interval = (opts['cache-clean-interval'] as number | undefined) ?? DEFAULT_CACHE_CLEAN_INTERVAL;
  if (interval > 0xffffffff) throw invalid('Cache clean interval too big');

  const lazyRefcounts = (opts['lazy-refcounts'] as boolean | undefined) ?? (s.header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
  if (lazyRefcounts && s.header.version < 3) {
    throw invalid('Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level');
  }

  const overlap = opts['overlap-check'] as string | undefined;
  const template = opts['overlap-check.template'] as string | undefined;
  if (overlap !== undefined && template !== undefined && overlap !== template) {
    throw invalid(`Conflicting values for qcow2 options 'overlap-check' ('${overlap}') and 'overlap-check.template' ('${template}')`);
  }
  const mode = overlap ?? template ?? 'cached';
  if (!['none', 'constant', 'cached', 'all'].includes(mode)) {
    throw invalid(`Unsupported value '${mode}' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all`);
  }

  return {
    l2CacheEntries,
    l2CacheEntrySize: entrySize,
    refcountCacheClusters,
    lazyRefcounts,
    discardRequest: (opts['pass-discard-request'] as boolean | undefined) ?? discardUnmap,
    discardSnapshot: (opts['pass-discard-snapshot'] as boolean | undefined) ?? true,
    discardOther: (opts['pass-discard-other'] as boolean | undefined) ?? false,
  };
}

/** Apply runtime options to the state (caches are created here). */
export function applyRuntimeOptions(s: Qcow2State, r: RuntimeOptions): void {
  s.l2SliceSize = r.l2CacheEntrySize / s.l2EntrySize;
  s.l2Cache = new TableCache(s.file, r.l2CacheEntrySize, r.l2CacheEntries, 'l2_update',
    (offset, bytes) => preventMetadataOverwrite(s, offset, bytes, 'active L2 table'));
  s.refcountCache = new TableCache(s.file, s.clusterSize, r.refcountCacheClusters, 'refblock_update_part',
    (offset, bytes) => preventMetadataOverwrite(s, offset, bytes, 'refcount block'));
  s.lazyRefcounts = r.lazyRefcounts;
  s.discardPassthrough = {
    never: false, always: true, request: r.discardRequest, snapshot: r.discardSnapshot, other: r.discardOther,
  };
}

export interface LoadOptions {
  readOnly: boolean;
  opts: ParsedOptions;
  discardUnmap: boolean;
  /** Opened for qemu-img check: the snapshot table is left to the check, which reports its errors. */
  checkMode?: boolean;
  /** The `encrypt.*` runtime options, prefix taken off. */
  encryptOptions?: FlatOptions;
  /**
   * Grants the image file its permissions, which come after the open otherwise, for a header
   * write during the open (QEMU's attach has granted them by then).
   */
  takeFilePermissions?: () => void;
  /** Opened without I/O (qemu-img info): the encryption key is not needed. */
  withoutIo?: boolean;
  /** Reporting of unsupported incompatible features needs the feature table. */
}

async function readOrFail(file: BdrvChild, offset: number, bytes: number, what: string): Promise<Uint8Array> {
  const buf = new Uint8Array(bytes);
  try {
    await file.read(offset, bytes, buf);
  } catch (e) {
    throw errnoError(what, e);
  }
  return buf;
}

/** Read and validate everything qcow2_do_open reads, producing the state of an open image. */
export async function loadState(file: BdrvChild, o: LoadOptions): Promise<Qcow2State> {
  const raw = await readOrFail(file, 0, HEADER_SIZE_V3, 'Could not read qcow2 header');
  const magic = new DataView(raw.buffer).getUint32(0);
  const h = parseHeader(raw);
  validateHeader(h, magic);
  const g = geometry(h);
  let unknownHeaderFields: Uint8Array = new Uint8Array(0);
  if (h.version >= 3 && h.headerLength > HEADER_SIZE_V3) {
    unknownHeaderFields = await readOrFail(file, HEADER_SIZE_V3, h.headerLength - HEADER_SIZE_V3, 'Could not read unknown qcow2 header fields');
  }
  const extEnd = h.backingFileOffset || g.clusterSize;
  const headerCluster = await readOrFail(file, 0, extEnd, 'Could not read qcow2 header');
  validateCompressionType(h);
  if (h.incompatibleFeatures & ~INCOMPAT_MASK) {
    let table: ReturnType<typeof parseExtensions>['featureTable'] = [];
    try {
      table = parseExtensions(headerCluster, h.headerLength, extEnd).featureTable;
    } catch {
      // The message names what it can.
    }
    throw new BlkioError('ENOTSUP', unsupportedFeatureMessage(table, h.incompatibleFeatures & ~INCOMPAT_MASK));
  }
  // A corrupt image may be opened for writing only to be repaired.
  if (h.incompatibleFeatures & INCOMPAT_CORRUPT && !o.readOnly && !o.checkMode) {
    throw new BlkioError('EACCES', 'qcow2: Image is corrupt; cannot be opened read/write');
  }
  if (g.subclusterSize < 512) throw invalid(`Unsupported subcluster size: ${g.subclusterSize}`);
  if (h.refcountOrder > 6) throw invalid('Reference count entry width too large; may not exceed 64 bits');
  if (h.refcountTableClusters === 0 && !o.checkMode) throw invalid('Image does not contain a reference count table');
  validateTable(h.refcountTableOffset, h.refcountTableClusters, g.clusterSize, MAX_REFTABLE_SIZE, g.clusterSize, 'Reference count table');
  if (!o.checkMode) validateSnapshotTable(h, g.clusterSize, 'Snapshot table');
  validateTable(h.l1TableOffset, h.l1Size, 8, MAX_L1_SIZE, g.clusterSize, 'Active L1 table');
  const headerSize = new DataView(raw.buffer).getBigUint64(24);
  const l1VmStateIndex = vmStateL1Index(g, headerSize);
  if (l1VmStateIndex > 0x7fffffff) throw new BlkioError('EFBIG', 'Image is too big');
  if (h.l1Size < l1VmStateIndex) throw invalid('L1 table is too small');
  const l1Table = makeTable(h.l1Size ? await readOrFail(file, h.l1TableOffset, h.l1Size * 8, 'Could not read L1 table') : new Uint8Array(0));

  const refcountTableSize = h.refcountTableClusters * (g.clusterSize / 8);
  const totalBytes = (headerSize / 512n) * 512n;
  const s: Qcow2State = {
    file, dataFile: file, lock: new Mutex(), header: h, readOnly: o.readOnly, ...g,
    // Like QEMU, the image has whole sectors only: a partial last one is dropped.
    l2SliceSize: g.l2Size, size: Number(totalBytes),
    l1Size: h.l1Size, l1TableOffset: h.l1TableOffset, l1Table, l1VmStateIndex,
    refcountTableOffset: h.refcountTableOffset, refcountTableSize, refcountTable: makeTable(new Uint8Array(0)),
    maxRefcountTableIndex: 0, freeClusterIndex: 0, freeByteOffset: 0, freeByteClusterReused: false,
    l2Cache: undefined!, refcountCache: undefined!, discardPassthrough: undefined!,
    pendingDiscards: [], cacheDiscards: false, lazyRefcounts: false,
    unknownHeaderFields, unknownExtensions: [], snapshots: [], snapshotsSize: 0,
    inflight: new Set(), signaledCorruption: false, unusable: false,
  };
  // QEMU checks the method with the runtime options (last among them), after the L1 table.
  applyRuntimeOptions(s, runtimeOptions(s, o.opts, o.discardUnmap));
  const encryptOptions = o.encryptOptions ?? {};
  checkEncryptOptions(h.cryptMethod, encryptOptions);

  debugEvent(file.node, 'reftable_load');
  try {
    s.refcountTable = makeTable(await readOrFail(file, h.refcountTableOffset, refcountTableSize * 8, ''));
  } catch (e) {
    throw errnoError('Could not initialize refcount handling', e);
  }
  updateMaxRefcountTableIndex(s);

  const ext = parseExtensions(headerCluster, h.headerLength, extEnd, {
    header: h, clusterSize: g.clusterSize,
    warn: (warning, hint) => {
      file.node.layer.warn(warning);
      writeStderr(hint);
    },
  });
  s.backingFormat = ext.backingFormat;
  s.unknownExtensions = ext.unknown;
  s.bitmapDirectory = decodeBitmapsExtension(ext.bitmaps, h.autoclearFeatures);
  s.dataFileName = ext.dataFile;
  s.cryptoExtension = ext.cryptoHeader;
  if (h.backingFileOffset) {
    const len = h.backingFileSize;
    if (len > Math.min(BACKING_FILE_MAX, g.clusterSize - h.backingFileOffset)) throw invalid('Backing file name too long');
    // QEMU keeps the name as a C string: a NUL (the header's own bytes, say) ends it.
    s.backingFile = cString(await readOrFail(file, h.backingFileOffset, len, 'Could not read backing file name'));
  }
  if (h.cryptMethod) {
    const layer = file.node.layer;
    const opened = await openEncryption(file, {
      cryptMethod: h.cryptMethod, options: encryptOptions, cryptoExtension: ext.cryptoHeader,
      withoutIo: o.withoutIo ?? false, lookupObject: (id) => layer.objects.get(id),
    });
    s.encryption = opened.encryption;
    s.encryptionInfo = opened.info;
  }
  if (!o.checkMode) await readSnapshotTable(s);

  // Unknown autoclear bits are cleared, and bitmaps found without their bit are dropped.
  const ignoredBitmaps = ext.bitmaps !== undefined && !s.bitmapDirectory;
  if ((h.autoclearFeatures & ~AUTOCLEAR_MASK || ignoredBitmaps) && !o.readOnly) {
    o.takeFilePermissions?.();
    h.autoclearFeatures &= AUTOCLEAR_MASK;
    await updateHeader(s);
  }
  if (totalBytes > MAX_NODE_LENGTH) throw new BlkioError('EFBIG', 'Could not refresh total sector count: File too large');
  return s;
}

export function validateSnapshotTable(h: Qcow2Header, clusterSize: number, name: string): void {
  validateTable(h.snapshotsOffset, h.nbSnapshots, SNAPSHOT_HEADER_SIZE, SNAPSHOT_HEADER_SIZE * MAX_SNAPSHOTS, clusterSize, name);
}

/** Read the snapshot table the header points to (validated). */
export async function readSnapshotTable(s: Qcow2State): Promise<void> {
  const h = s.header;
  const table = await parseSnapshotTable(
    (offset, bytes) => readOrFail(s.file, offset, bytes, 'Failed to read snapshot table'), h.snapshotsOffset, h.nbSnapshots, s.size,
  );
  s.snapshots = table.snapshots;
  s.snapshotsSize = table.size;
}

/** Rewrite the header cluster from the in-memory state (QEMU's qcow2_update_header). */
export async function updateHeader(s: Qcow2State): Promise<void> {
  const h = s.header;
  validateCompressionType(h);
  const header = {
    ...h,
    size: s.size, l1Size: s.l1Size, l1TableOffset: s.l1TableOffset, refcountTableOffset: s.refcountTableOffset,
    refcountTableClusters: s.refcountTableSize / (s.clusterSize / 8),
  };
  const cluster = buildHeaderCluster({
    header, clusterSize: s.clusterSize, unknownHeaderFields: s.unknownHeaderFields,
    backingFile: s.backingFile, backingFormat: s.backingFormat, dataFile: s.dataFileName, cryptoHeader: s.cryptoExtension,
    bitmaps: s.bitmapDirectory && encodeBitmapsExtension(s.bitmapDirectory), unknownExtensions: s.unknownExtensions,
  });
  await s.file.write(0, s.clusterSize, cluster);
}

/** Write back both caches, then clear the dirty bit (an image closed cleanly). */
export async function markClean(s: Qcow2State): Promise<void> {
  if (!(s.header.incompatibleFeatures & INCOMPAT_DIRTY)) return;
  s.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
  await s.l2Cache.flush();
  await s.refcountCache.flush();
  await updateHeader(s);
}

export async function markConsistent(s: Qcow2State): Promise<void> {
  if (!(s.header.incompatibleFeatures & INCOMPAT_CORRUPT)) return;
  s.header.incompatibleFeatures &= ~INCOMPAT_CORRUPT;
  await updateHeader(s);
}

/** Fail on an image made unusable by corruption; run a pending dirty-image repair first. */
export async function requireUsable(s: Qcow2State): Promise<void> {
  if (s.pendingRepair) {
    s.repair ??= s.pendingRepair();
    await s.repair;
  }
  if (s.unusable) throw errno('ENOMEDIUM');
}
