/**
 * `qed`: the QEMU Enhanced Disk format (QEMU's block/qed*.c). A header cluster, an L1 table
 * and L2 tables of `tableSize` clusters each, holding 64-bit cluster offsets (0: not allocated,
 * 1: reads as zeroes). Clusters are allocated at the end of the file, data before its new L2
 * table, and the L2 table (or L1 entry) is written after the data, so a crash leaks clusters at
 * worst; an image without a backing file is marked as needing a check while it allocates.
 */
import { BlkioError, errno, errnoError } from '../../errors.js';
import { ROLE_IMAGE, type BlockDriver, type CreateRequest } from '../../block/driver.js';
import type { BdrvChild } from '../../block/child.js';
import { STATUS_DATA, STATUS_OFFSET_VALID, STATUS_ZERO } from '../../block/flags.js';
import { limitsFrom, type BlockNode } from '../../block/node.js';
import { Mutex } from '../../block/mutex.js';
import { roundDown, roundUp } from '../../arithmetic.js';
import { cString, nameBytes } from '../../byte-strings.js';
import { fileAllocatedSize, openFailure, readBytes, takeFilePermissions } from '../format-helpers.js';
import {
  BACKING_NAME_MAX, DEFAULT_CLUSTER_SIZE, DEFAULT_TABLE_SIZE, F_BACKING_FILE, F_BACKING_FORMAT_NO_PROBE, F_NEED_CHECK,
  HEADER_BYTES, isClusterSizeValid, isImageSizeValid, isTableSizeValid, magicOf, MAX_CLUSTER_SIZE, MAX_TABLE_SIZE,
  maxImageSize, MIN_CLUSTER_SIZE, MIN_TABLE_SIZE, parseHeader, QED_MAGIC, serializeHeader, unknownFeatures,
} from './header.js';
import { checkImage } from './check.js';
import { clusterEntry, isClusterOffsetValid, isTableOffsetValid, L2_CACHE_TABLES, loadL2Table, setClusterEntry, type QedState } from './tables.js';
import { LruMap } from '../lru-map.js';

const SECTOR = 512;
/** Table entries that are no cluster offset. */
const UNALLOCATED = 0;
const ZERO_CLUSTER = 1;
/** Zeroes written over allocated clusters go out in pieces of at most this size. */
const ZERO_CHUNK = 1024 * 1024;

/** What one lookup finds for a run of clusters that share it, within one L2 table. */
type Run =
  | { kind: 'data'; bytes: number; hostOffset: number; table: Uint8Array; tableOffset: number }
  | { kind: 'zero' | 'unallocated'; bytes: number; table: Uint8Array; tableOffset: number }
  | { kind: 'no-table'; bytes: number };

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** Bytes one L2 table maps. */
function l2Span(s: QedState): number {
  return s.tableEntries * s.header.clusterSize;
}

/**
 * The run of clusters from guest offset `pos` (at most `bytes` long, never past its L2 table)
 * that is all data (contiguous in the file), all zero or all unallocated.
 */
async function findRun(s: QedState, pos: number, bytes: number): Promise<Run> {
  const cs = s.header.clusterSize;
  const span = l2Span(s);
  bytes = Math.min(bytes, (Math.floor(pos / span) + 1) * span - pos);
  const tableOffset = clusterEntry(s.l1, Math.floor(pos / span));
  if (tableOffset === UNALLOCATED) return { kind: 'no-table', bytes };
  if (!isTableOffsetValid(s, tableOffset)) throw errno('EINVAL');
  const table = await loadL2Table(s, tableOffset);
  const inCluster = pos % cs;
  const index = Math.floor(pos / cs) % s.tableEntries;
  const end = Math.min(index + Math.ceil((inCluster + bytes) / cs), s.tableEntries);
  const first = clusterEntry(table, index);
  let i = index + 1;
  if (first === UNALLOCATED || first === ZERO_CLUSTER) {
    while (i < end && clusterEntry(table, i) === first) i++;
  } else {
    while (i < end && clusterEntry(table, i) === first + (i - index) * cs) i++;
  }
  bytes = Math.min(bytes, (i - index) * cs - inCluster);
  if (first === UNALLOCATED) return { kind: 'unallocated', bytes, table, tableOffset };
  if (first === ZERO_CLUSTER) return { kind: 'zero', bytes, table, tableOffset };
  if (!isClusterOffsetValid(s, first)) throw errno('EINVAL');
  return { kind: 'data', bytes, hostOffset: first, table, tableOffset };
}

/** The backing file's data at `pos` (zeroes past its end, or without one). */
async function readBacking(node: BlockNode<QedState>, pos: number, out: Uint8Array): Promise<void> {
  const backing = node.backing;
  const length = backing ? backing.getLength() : 0;
  const n = Math.max(0, Math.min(length - pos, out.length));
  out.fill(0, n);
  if (n > 0) await backing!.read(pos, n, out.subarray(0, n));
}

async function readGuest(node: BlockNode<QedState>, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  const s = node.state;
  for (let done = 0; done < bytes;) {
    const pos = offset + done;
    const run = await findRun(s, pos, bytes - done);
    const out = buf.subarray(done, done + run.bytes);
    if (run.kind === 'data') await s.file.read(run.hostOffset + (pos % s.header.clusterSize), run.bytes, out);
    else if (run.kind === 'zero') out.fill(0);
    else await readBacking(node, pos, out);
    done += run.bytes;
  }
}

async function writeHeader(s: QedState): Promise<void> {
  await s.file.write(0, HEADER_BYTES, serializeHeader(s.header));
}

/** Space for `n` clusters at the end of the file (written later). */
function allocateClusters(s: QedState, n: number): number {
  const offset = s.fileSize;
  s.fileSize += n * s.header.clusterSize;
  return offset;
}

/**
 * Write the 512-byte sectors of a table holding entries [index, index+n), as QEMU writes
 * table updates.
 */
async function writeTableEntries(s: QedState, tableOffset: number, table: Uint8Array, index: number, n: number): Promise<void> {
  const perSector = SECTOR / 8;
  const start = roundDown(index, perSector) * 8;
  const end = roundUp(index + n, perSector) * 8;
  await s.file.write(tableOffset + start, end - start, table.subarray(start, end));
}

/** Point `n` entries from `index` at `cluster` and the clusters after it (or all at the same marker). */
function linkClusters(s: QedState, table: Uint8Array, index: number, n: number, cluster: number): void {
  for (let i = 0; i < n; i++) {
    setClusterEntry(table, index + i, cluster);
    if (cluster !== UNALLOCATED && cluster !== ZERO_CLUSTER) cluster += s.header.clusterSize;
  }
}

/** Record a run's new clusters: in a new L2 table (then the L1 entry), or in the sectors of its table. */
async function linkRun(s: QedState, pos: number, run: Run, n: number, cluster: number): Promise<void> {
  const index = Math.floor(pos / s.header.clusterSize) % s.tableEntries;
  if (run.kind !== 'no-table') {
    linkClusters(s, run.table, index, n, cluster);
    await writeTableEntries(s, run.tableOffset, run.table, index, n);
    return;
  }
  const tableOffset = allocateClusters(s, s.header.tableSize);
  const table = new Uint8Array(s.tableEntries * 8);
  linkClusters(s, table, index, n, cluster);
  await s.file.write(tableOffset, table.length, table);
  await s.file.flush();
  s.l2Cache.set(tableOffset, Promise.resolve(table));
  const l1Index = Math.floor(pos / l2Span(s));
  setClusterEntry(s.l1, l1Index, tableOffset);
  await writeTableEntries(s, s.header.l1TableOffset, s.l1, l1Index, 1);
}

/**
 * Fill host range [hostOffset, hostOffset+bytes) with what the guest saw at [pos, pos+bytes) before
 * the cluster had data: zeroes for a zero cluster (the guest zeroed it), else the backing file's data.
 */
async function copyPreviousData(node: BlockNode<QedState>, run: Run, pos: number, bytes: number, hostOffset: number): Promise<void> {
  if (bytes === 0) return;
  const buf = new Uint8Array(bytes);
  if (run.kind !== 'zero') await readBacking(node, pos, buf);
  await node.state.file.write(hostOffset, bytes, buf);
}

/**
 * A write (`data` undefined: zeroes) to a run without data clusters: new clusters filled with
 * the backing file's data around the written part, or for zeroes the zero marker.
 */
async function allocatingWrite(node: BlockNode<QedState>, pos: number, run: Run, data: Uint8Array | undefined): Promise<void> {
  const s = node.state;
  const cs = s.header.clusterSize;
  if (!data && run.kind === 'zero') return;
  const inCluster = pos % cs;
  const n = Math.ceil((inCluster + run.bytes) / cs);
  const cluster = data ? allocateClusters(s, n) : ZERO_CLUSTER;
  // With a backing file the flush before linking the clusters keeps the image consistent instead.
  if (!node.backing && !(s.header.features & F_NEED_CHECK)) {
    s.header.features |= F_NEED_CHECK;
    await writeHeader(s);
  }
  if (data) {
    await copyPreviousData(node, run, pos - inCluster, inCluster, cluster);
    const end = pos + run.bytes;
    await copyPreviousData(node, run, end, roundUp(end, cs) - end, cluster + inCluster + run.bytes);
    await s.file.write(cluster + inCluster, run.bytes, data);
    if (node.backing) await s.file.flush();
  }
  await linkRun(s, pos, run, n, cluster);
}

async function writeZeroesInPlace(file: BdrvChild, offset: number, bytes: number): Promise<void> {
  const zeroes = new Uint8Array(Math.min(bytes, ZERO_CHUNK));
  for (let done = 0; done < bytes; done += zeroes.length) {
    const n = Math.min(zeroes.length, bytes - done);
    await file.write(offset + done, n, zeroes.subarray(0, n));
  }
}

/** A write request (`buf` undefined: zeroes, whole clusters), run by run in guest order. */
async function writeGuest(node: BlockNode<QedState>, offset: number, bytes: number, buf: Uint8Array | undefined): Promise<void> {
  const s = node.state;
  for (let done = 0; done < bytes;) {
    const pos = offset + done;
    const run = await findRun(s, pos, bytes - done);
    const data = buf?.subarray(done, done + run.bytes);
    if (run.kind === 'data') {
      const hostOffset = run.hostOffset + (pos % s.header.clusterSize);
      if (data) await s.file.write(hostOffset, run.bytes, data);
      else await writeZeroesInPlace(s.file, hostOffset, run.bytes);
    } else {
      await allocatingWrite(node, pos, run, data);
    }
    done += run.bytes;
  }
}

/** The image was closed cleanly (or is about to be read-only): no check needed at the next open. */
async function markClean(s: QedState): Promise<void> {
  if (!(s.header.features & F_NEED_CHECK)) return;
  await s.file.flush();
  s.header.features &= ~F_NEED_CHECK;
  await writeHeader(s);
}

/** The header's fields checked in QEMU's order, with its texts; sets where clusters are allocated. */
function validateHeader(s: QedState, fileLength: number): void {
  const h = s.header;
  const unknown = unknownFeatures(h);
  if (unknown) throw new BlkioError('ENOTSUP', `Unsupported QED features: ${unknown.toString(16)}`);
  if (!isClusterSizeValid(h.clusterSize)) throw invalid('QED cluster size is invalid');
  s.fileSize = roundDown(fileLength, h.clusterSize);
  if (!isTableSizeValid(h.tableSize)) throw invalid('QED table size is invalid');
  if (!isImageSizeValid(h.imageSize, h.clusterSize, h.tableSize)) throw invalid('QED image size is invalid');
  if (!isTableOffsetValid(s, h.l1TableOffset)) throw invalid('QED table offset is invalid');
  if (h.headerSize > Math.floor(0xffffffff / h.clusterSize)) throw invalid('QED header size is too large');
}

/** The backing file the header names (and `raw` as its format when it is not to be probed). */
async function readBackingName(node: BlockNode<QedState>, s: QedState): Promise<void> {
  const h = s.header;
  if (!(h.features & F_BACKING_FILE)) return;
  if (h.backingFilenameOffset + h.backingFilenameSize > h.clusterSize * h.headerSize) {
    throw invalid('QED backing filename offset is invalid');
  }
  if (h.backingFilenameSize > BACKING_NAME_MAX) throw invalid('Failed to read backing filename');
  const name = await readBytes(s.file, h.backingFilenameOffset, h.backingFilenameSize).catch(() => {
    throw invalid('Failed to read backing filename');
  });
  node.backingFile = cString(name);
  if (h.features & F_BACKING_FORMAT_NO_PROBE) node.backingFormat = 'raw';
}

async function openImage(node: BlockNode<QedState>, file: BdrvChild): Promise<QedState> {
  const bytes = await readBytes(file, 0, HEADER_BYTES);
  if (magicOf(bytes) !== QED_MAGIC) throw invalid('Image not in QED format');
  const header = parseHeader(bytes);
  const s: QedState = {
    file, header, fileSize: 0, tableEntries: 0, l1: new Uint8Array(0), l2Cache: new LruMap(L2_CACHE_TABLES), lock: new Mutex(),
  };
  validateHeader(s, file.getLength());
  s.tableEntries = (header.tableSize * header.clusterSize) / 8;
  await readBackingName(node, s);
  // Autoclear features this version does not know are knocked out, so a newer one sees they went stale.
  if (header.autoclearFeatures !== 0n && !node.readOnly) {
    takeFilePermissions(node, file);
    header.autoclearFeatures = 0n;
    await writeHeader(s);
    await file.flush();
  }
  s.l1 = await readBytes(file, header.l1TableOffset, s.tableEntries * 8);
  // An image not closed cleanly is repaired before it is written again (read-only, it is read as it is).
  if (header.features & F_NEED_CHECK && !node.readOnly && !node.layer.openForCheck) {
    takeFilePermissions(node, file);
    await checkImage(s, true);
  }
  return s;
}

interface QedCreateSettings {
  clusterSize: number;
  tableSize: number;
}

/** The create options QEMU checks once the file is made, with its texts. */
function createSettings(request: CreateRequest): QedCreateSettings {
  const clusterSize = Number(request.options.cluster_size ?? DEFAULT_CLUSTER_SIZE);
  const tableSize = Number(request.options.table_size ?? DEFAULT_TABLE_SIZE);
  if (!isClusterSizeValid(clusterSize)) {
    throw invalid(`QED cluster size must be within range [${MIN_CLUSTER_SIZE}, ${MAX_CLUSTER_SIZE}] and power of 2`);
  }
  if (!isTableSizeValid(tableSize)) throw invalid(`QED table size must be within range [${MIN_TABLE_SIZE}, ${MAX_TABLE_SIZE}] and power of 2`);
  if (!isImageSizeValid(request.size, clusterSize, tableSize)) {
    throw invalid(
      `QED image size must be a non-zero multiple of cluster size and less than ${maxImageSize(clusterSize, tableSize)} bytes`,
    );
  }
  return { clusterSize, tableSize };
}

export const qedDriver: BlockDriver<QedState> = {
  name: 'qed',
  kind: 'format',
  supportsBacking: true,
  options: {},

  probe: (header) => (header.length >= HEADER_BYTES && magicOf(header) === QED_MAGIC ? 100 : 0),

  async open(node, ctx) {
    const file = (await ctx.openChild('file', ROLE_IMAGE))!;
    return openImage(node, file).catch((e: unknown) => {
      throw openFailure(file, e);
    });
  },

  async close(node) {
    // A failed open closes a node without state.
    if (node.state && !node.readOnly) await markClean(node.state);
  },

  async reopen(node) {
    // Draining for the reopen runs QEMU's pending need-check timer, which marks the image clean.
    if (node.readOnly) await node.state.lock.run(() => markClean(node.state));
  },

  refreshLimits(node) {
    node.limits = { ...limitsFrom(node.state.file.node), requestAlignment: SECTOR, zeroAlignment: node.state.header.clusterSize };
  },

  getLength: (node) => node.state.header.imageSize,

  allocatedSize: (node) => fileAllocatedSize(node.state.file),

  read: (node, offset, bytes, buf) => readGuest(node, offset, bytes, buf),

  async write(node, offset, bytes, buf) {
    await node.state.lock.run(() => writeGuest(node, offset, bytes, buf));
  },

  async writeZeroes(node, offset, bytes) {
    const cs = node.state.header.clusterSize;
    if (offset % cs || bytes % cs) throw errno('ENOTSUP');
    await node.state.lock.run(() => writeGuest(node, offset, bytes, undefined));
  },

  async blockStatus(node, offset, bytes) {
    const s = node.state;
    const run = await findRun(s, offset, bytes);
    if (run.kind === 'data') {
      return {
        status: STATUS_DATA | STATUS_OFFSET_VALID, pnum: run.bytes, map: run.hostOffset + (offset % s.header.clusterSize), file: s.file.node,
      };
    }
    return { status: run.kind === 'zero' ? STATUS_ZERO : 0, pnum: run.bytes };
  },

  async truncate(node, size, _exact, prealloc) {
    const s = node.state;
    if (prealloc !== 'off') throw new BlkioError('ENOTSUP', `Unsupported preallocation mode '${prealloc}'`);
    if (!isImageSizeValid(size, s.header.clusterSize, s.header.tableSize)) throw invalid('Invalid image size specified');
    if (size < s.header.imageSize) throw new BlkioError('ENOTSUP', 'Shrinking images is currently not supported');
    const oldSize = s.header.imageSize;
    s.header.imageSize = size;
    await writeHeader(s).catch((e: unknown) => {
      s.header.imageSize = oldSize;
      throw errnoError('Failed to update the image size', e);
    });
  },

  getInfo: (node) => ({ clusterSize: node.state.header.clusterSize }),

  check: (node, repair) => checkImage(node.state, repair !== undefined),

  async changeBackingFile(node, filename, format) {
    const s = node.state;
    const h = s.header;
    // Past a compat feature it does not know, QEMU cannot tell what follows the header.
    if (filename && h.compatFeatures) throw errno('ENOTSUP');
    const name = nameBytes(filename);
    if (HEADER_BYTES + name.length > h.headerSize * h.clusterSize) throw errno('ENOSPC');
    let features = h.features & ~(F_BACKING_FILE | F_BACKING_FORMAT_NO_PROBE);
    if (filename) features |= F_BACKING_FILE | (format === 'raw' ? F_BACKING_FORMAT_NO_PROBE : 0n);
    const updated = { ...h, features, backingFilenameOffset: HEADER_BYTES, backingFilenameSize: name.length };
    const bytes = new Uint8Array(HEADER_BYTES + name.length);
    bytes.set(serializeHeader(updated));
    bytes.set(name, HEADER_BYTES);
    await s.lock.run(async () => {
      await s.file.write(0, bytes.length, bytes);
      await s.file.flush();
      s.header = updated;
    });
    node.backingFile = filename;
    node.backingFormat = format;
  },

  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'backing_file', type: 'string', help: 'File name of a base image' },
    { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
    { name: 'cluster_size', type: 'size', default: DEFAULT_CLUSTER_SIZE, help: 'Cluster size (in bytes)' },
    { name: 'table_size', type: 'size', help: 'L1/L2 table size (in clusters)' },
  ],

  async create(file, request) {
    const { clusterSize, tableSize } = createSettings(request);
    const backingFile = request.options.backing_file as string | undefined;
    const name = nameBytes(backingFile ?? '');
    let features = 0n;
    if (backingFile !== undefined) features |= F_BACKING_FILE | (request.options.backing_fmt === 'raw' ? F_BACKING_FORMAT_NO_PROBE : 0n);
    const header = serializeHeader({
      clusterSize, tableSize, headerSize: 1, features, compatFeatures: 0n, autoclearFeatures: 0n, l1TableOffset: clusterSize,
      imageSize: request.size, backingFilenameOffset: backingFile === undefined ? 0 : HEADER_BYTES, backingFilenameSize: name.length,
    });
    // The file's length tells where clusters are allocated, so it starts empty.
    await file.truncate(0, false);
    await file.write(0, HEADER_BYTES, header);
    if (name.length) await file.write(HEADER_BYTES, name.length, name);
    const l1Bytes = clusterSize * tableSize;
    await file.write(clusterSize, l1Bytes, new Uint8Array(l1Bytes));
  },
};
