/**
 * `parallels`: the Parallels / OpenVZ ploop image. A 64-byte header, then the block allocation
 * table (BAT, one little-endian entry per cluster: where the cluster is, 0 when unallocated)
 * and the clusters in allocation order from the data offset on. As QEMU 7.2 does, a new run of
 * clusters goes at the end of the data (after growing the file by a preallocation step when it
 * is too short), the BAT is written on flush, an image open read-write is marked in use until
 * it is closed, and the close cuts the file back to the end of the data.
 */
import { BlkioError, errno, toBlkioError } from '../errors.js';
import { ROLE_IMAGE, type BlockDriver, type CheckResult, type CreateRequest } from '../block/driver.js';
import type { BdrvChild } from '../block/child.js';
import { limitsFrom, type BlockNode } from '../block/node.js';
import { REQUEST_MAX_BYTES, STATUS_DATA, STATUS_OFFSET_VALID } from '../block/flags.js';
import { Mutex } from '../block/mutex.js';
import { MAX_NODE_LENGTH } from '../block/io.js';
import { roundUp } from '../arithmetic.js';
import { lazyBuiltin } from '../lazy-builtin.js';
import { fileAllocatedSize, readBytes, takeFilePermissions, view } from './format-helpers.js';

const md5 = lazyBuiltin<typeof import('node:crypto')>('node:crypto');

const SECTOR = 512;
const HEADER_BYTES = 64;
/** Offsets in the file are counted in sectors (this magic) or in clusters (the extended one). */
const MAGIC_SECTORS = 'WithoutFreeSpace';
const MAGIC_CLUSTERS = 'WithouFreSpacExt';
const VERSION = 2;
const INUSE_MAGIC = 0x746f6e59;
const EXTENSION_MAGIC = 0xab234cef23dcea87n;
const DIRTY_BITMAP_FEATURE_MAGIC = 0x20385fae252cb34an;
/** Magic and MD5 checksum. */
const EXTENSION_HEADER_BYTES = 24;
/** Magic, flags, data size and a reserved word. */
const FEATURE_HEADER_BYTES = 24;
const DEFAULT_CLUSTER_SIZE = 1024 * 1024;
const DEFAULT_PREALLOC_SIZE = 128 * 1024 * 1024;
const INT32_MAX = 0x7fffffff;
/** No image may have more clusters than this factor (QEMU's limit at create). */
const MAX_CLUSTERS = 2 ** 32;
/** The header and BAT are written back in blocks of this many bytes (QEMU: four host pages). */
const DIRTY_BLOCK = 4 * 4096;
/** The file's preferred buffer alignment, to which QEMU rounds the header it reads and writes. */
const MEM_ALIGN = 4096;
const PREALLOC_MODES = ['falloc', 'truncate'] as const;

/** Header fields by byte offset (all little endian). */
const H = {
  magic: 0, version: 16, heads: 20, cylinders: 24, tracks: 28, batEntries: 32, nbSectors: 36, inuse: 44, dataOff: 48,
  flags: 52, extOff: 56,
} as const;

interface ParallelsState {
  file: BdrvChild;
  /**
   * The header followed by the BAT (and whatever fills up to `headerSize`), as in the file, but
   * only as far as the file has bytes (grown as entries are set): the rest of the BAT is zeroes.
   * Its length is `headerSize` or a multiple of DIRTY_BLOCK.
   */
  header: Uint8Array;
  headerView: DataView;
  headerSize: number;
  batSize: number;
  /** Sectors per cluster. */
  tracks: number;
  offMultiplier: number;
  totalSectors: number;
  /** The first sector after the data: where the next cluster goes. */
  dataEnd: number;
  preallocSectors: number;
  preallocMode: (typeof PREALLOC_MODES)[number];
  /** The image was in use when opened (not closed cleanly): check reports it. */
  unclean: boolean;
  /** Indexes of DIRTY_BLOCK-sized pieces of `header` changed since the last flush. */
  dirtyBlocks: Set<number>;
  lock: Mutex;
}

/** The 16-byte magic, a character a byte. */
function magicOf(header: Uint8Array): string {
  return String.fromCharCode(...header.subarray(H.magic, H.magic + 16));
}

function batEntryOffset(index: number): number {
  return HEADER_BYTES + 4 * index;
}

/** How many BAT entries `header` holds; those after them are zero. */
function storedBatEntries(s: ParallelsState): number {
  return Math.min(s.batSize, Math.floor((s.header.length - HEADER_BYTES) / 4));
}

/** The sector where cluster `index` starts in the file, 0 when unallocated. */
function clusterSector(s: ParallelsState, index: number): number {
  if (index >= storedBatEntries(s)) return 0;
  return s.headerView.getUint32(batEntryOffset(index), true) * s.offMultiplier;
}

/** The sector in the file holding guest sector `sector`, or -1 when its cluster is unallocated. */
function hostSector(s: ParallelsState, sector: number): number {
  const index = Math.floor(sector / s.tracks);
  if (index >= s.batSize) return -1;
  const start = clusterSector(s, index);
  return start === 0 ? -1 : start + (sector % s.tracks);
}

/**
 * Where guest sectors from `sector` are in the file and for how many of up to `sectors` that
 * holds: a run of clusters contiguous in the file, or a run of unallocated ones (-1).
 */
function mapRun(s: ParallelsState, sector: number, sectors: number): { host: number; count: number } {
  const host = hostSector(s, sector);
  let count = 0;
  while (count < sectors) {
    const here = hostSector(s, sector + count);
    if (count > 0 && here !== (host < 0 ? -1 : host + count)) break;
    count += Math.min(sectors - count, s.tracks - ((sector + count) % s.tracks));
  }
  return { host, count };
}

function setBatEntry(s: ParallelsState, index: number, value: number): void {
  if (index >= storedBatEntries(s)) {
    const length = Math.min(s.headerSize, Math.max(roundUp(batEntryOffset(index + 1), DIRTY_BLOCK), 2 * s.header.length));
    const header = new Uint8Array(length);
    header.set(s.header);
    s.header = header;
    s.headerView = view(header);
  }
  s.headerView.setUint32(batEntryOffset(index), value, true);
  s.dirtyBlocks.add(Math.floor(batEntryOffset(index) / DIRTY_BLOCK));
}

/**
 * Give the unallocated clusters of a run their place at the end of the data, growing the file
 * by the run plus the preallocation step when it is too short; a backing file's data is copied
 * into them first. Returns the run's first sector in the file.
 */
async function allocateRun(node: BlockNode<ParallelsState>, sector: number, count: number): Promise<number> {
  const s = node.state;
  const first = Math.floor(sector / s.tracks);
  const clusters = Math.ceil((sector + count) / s.tracks) - first;
  // A disk larger than its BAT has clusters with no entry (QEMU 7.2 asserts on writing one).
  if (first + clusters > s.batSize) throw errno('EIO');
  let space = clusters * s.tracks;
  if (s.dataEnd + space > Math.floor(s.file.getLength() / SECTOR)) {
    space += s.preallocSectors;
    if (s.preallocMode === 'truncate') {
      await s.file.truncate((s.dataEnd + space) * SECTOR, false);
    } else {
      await s.file.writeZeroes(s.dataEnd * SECTOR, space * SECTOR, 0);
    }
  }
  if (node.backing) {
    const bytes = clusters * s.tracks * SECTOR;
    const data = new Uint8Array(bytes);
    await node.backing.read(first * s.tracks * SECTOR, bytes, data);
    await s.file.write(s.dataEnd * SECTOR, bytes, data);
  }
  for (let i = 0; i < clusters; i++) {
    setBatEntry(s, first + i, s.dataEnd / s.offMultiplier);
    s.dataEnd += s.tracks;
  }
  return clusterSector(s, first) + (sector % s.tracks);
}

/** Write the changed pieces of the BAT. */
async function writeBat(s: ParallelsState): Promise<void> {
  for (const block of [...s.dirtyBlocks].sort((a, b) => a - b)) {
    const start = block * DIRTY_BLOCK;
    const end = Math.min(start + DIRTY_BLOCK, s.headerSize);
    await s.file.write(start, end - start, s.header.subarray(start, end));
  }
  s.dirtyBlocks.clear();
}

/** Write the header's first page (its in-use mark), as QEMU updates it. */
async function writeHeader(s: ParallelsState): Promise<void> {
  const bytes = Math.min(Math.max(MEM_ALIGN, HEADER_BYTES), s.headerSize);
  await s.file.write(0, bytes, s.header.subarray(0, bytes));
  await s.file.flush();
}

/** Write the BAT, mark the image clean and cut the file after its data; failures are not reported, as in QEMU. */
async function closeImage(s: ParallelsState): Promise<void> {
  await writeBat(s).catch(() => {});
  s.headerView.setUint32(H.inuse, 0, true);
  await writeHeader(s).catch(() => {});
  await s.file.truncate(s.dataEnd * SECTOR, true).catch(() => {});
}

/** The header checks of QEMU's open, in its order; returns the fields the rest of the open needs. */
function parseHeader(header: Uint8Array): { totalSectors: number; offMultiplier: number; tracks: number; batSize: number } {
  const v = view(header);
  let totalSectors = Number(v.getBigUint64(H.nbSectors, true));
  const tracks = v.getUint32(H.tracks, true);
  let offMultiplier: number;
  const magic = magicOf(header);
  if (v.getUint32(H.version, true) !== VERSION || (magic !== MAGIC_SECTORS && magic !== MAGIC_CLUSTERS)) {
    throw new BlkioError('EINVAL', 'Image not in Parallels format');
  }
  if (magic === MAGIC_SECTORS) {
    offMultiplier = 1;
    totalSectors = v.getUint32(H.nbSectors, true);
  } else {
    offMultiplier = tracks;
  }
  if (tracks === 0) throw new BlkioError('EINVAL', 'Invalid image: Zero sectors per track');
  if (tracks > Math.floor(INT32_MAX / 513)) throw new BlkioError('EFBIG', 'Invalid image: Too big cluster');
  const batSize = v.getUint32(H.batEntries, true);
  if (batSize > Math.floor(INT32_MAX / 4)) throw new BlkioError('EFBIG', 'Catalog too large');
  return { totalSectors, offMultiplier, tracks, batSize };
}

function parsePreallocMode(value: unknown): ParallelsState['preallocMode'] {
  const mode = (value as string | undefined) ?? 'falloc';
  if (!(PREALLOC_MODES as readonly string[]).includes(mode)) throw new BlkioError('EINVAL', `invalid parameter value: ${mode}`);
  return mode as ParallelsState['preallocMode'];
}

/** Size, id, granularity in sectors and L1 size, before the L1 table. */
const BITMAP_FEATURE_BYTES = 32;

/**
 * Checked as QEMU loads a dirty bitmap feature (the bitmap itself is not kept: no qemu-img output
 * shows it). `names` holds the bitmaps already loaded, by their id as a UUID text.
 */
function checkBitmapFeature(data: Uint8Array, clusterSize: number, totalSectors: number, names: Set<string>): void {
  if (data.length < BITMAP_FEATURE_BYTES) {
    throw new BlkioError('EINVAL', `Too small Bitmap Feature area in Parallels Format Extension: ${data.length} bytes, expected at least ${BITMAP_FEATURE_BYTES} bytes`);
  }
  const v = view(data);
  const bitmapSectors = v.getBigUint64(0, true);
  if (bitmapSectors !== BigInt(totalSectors)) {
    throw new BlkioError('EINVAL', `Bitmap size (in sectors) ${BigInt.asIntN(64, bitmapSectors)} differs from disk size in sectors ${totalSectors}`);
  }
  const l1Size = v.getUint32(28, true);
  if (l1Size * 8 > data.length - BITMAP_FEATURE_BYTES) {
    throw new BlkioError('EINVAL', 'Bitmaps feature corrupted: l1 table exceeds extension data_size');
  }
  // A 32-bit byte count, as QEMU computes it; QEMU 7.2 aborts on one that is no power of two of at least a sector.
  const granularity = (v.getUint32(24, true) * SECTOR) % 2 ** 32;
  if (granularity < SECTOR || (granularity & (granularity - 1)) !== 0) {
    throw new BlkioError('EINVAL', `Invalid bitmap granularity ${granularity}, expected a power of two of at least ${SECTOR} bytes`);
  }
  const hex = [...data.subarray(8, 24)].map((byte) => byte.toString(16).padStart(2, '0')).join('');
  const name = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  if (names.has(name)) throw new BlkioError('EINVAL', `Bitmap already exists: ${name}`);
  names.add(name);
  // One L1 entry for each cluster of bitmap data; one bit of it covers `granularity` bytes of the disk.
  const coverage = BigInt(granularity) * BigInt(clusterSize) * 8n;
  const expected = (BigInt(totalSectors) * BigInt(SECTOR) + coverage - 1n) / coverage;
  if (BigInt(l1Size) !== expected) {
    throw new BlkioError('EINVAL', `Bitmap table size ${l1Size} does not correspond to bitmap size and cluster size. Expected ${expected}`);
  }
}

/** Checked as QEMU reads a format extension cluster (read-only opens): magic, MD5 of the rest, and its features. */
async function checkFormatExtension(file: BdrvChild, offset: number, clusterSize: number, totalSectors: number): Promise<void> {
  const cluster = await readBytes(file, offset, clusterSize);
  const v = view(cluster);
  const magic = v.getBigUint64(0, true);
  if (magic !== EXTENSION_MAGIC) {
    throw new BlkioError('EINVAL', `Wrong parallels Format Extension magic: 0x${magic.toString(16)}, expected: 0x${EXTENSION_MAGIC.toString(16)}`);
  }
  const body = cluster.subarray(EXTENSION_HEADER_BYTES);
  const digest = md5().createHash('md5').update(body).digest();
  if (!digest.equals(cluster.subarray(8, EXTENSION_HEADER_BYTES))) {
    throw new BlkioError('EINVAL', 'Wrong checksum in Format Extension header. Format extension is corrupted.');
  }
  const bitmapNames = new Set<string>();
  // Without an end-of-features mark the features end where no feature header fits.
  for (let at = EXTENSION_HEADER_BYTES; clusterSize - at >= FEATURE_HEADER_BYTES;) {
    const featureMagic = v.getBigUint64(at, true);
    if (v.getBigUint64(at + 8, true) !== 0n) throw new BlkioError('EINVAL', 'Flags for extension feature are unsupported');
    const dataSize = v.getUint32(at + 16, true);
    at += FEATURE_HEADER_BYTES;
    if (dataSize > clusterSize - at) throw new BlkioError('EINVAL', 'Feature data_size exceedes Format Extension cluster');
    if (featureMagic === 0n) return;
    if (featureMagic !== DIRTY_BITMAP_FEATURE_MAGIC) throw new BlkioError('EINVAL', `Unknown feature: 0x${featureMagic.toString(16)}`);
    checkBitmapFeature(cluster.subarray(at, at + dataSize), clusterSize, totalSectors, bitmapNames);
    at = roundUp(at + dataSize, 8);
  }
}

async function openImage(node: BlockNode<ParallelsState>, file: BdrvChild, opts: Record<string, unknown>): Promise<ParallelsState> {
  const first = await readBytes(file, 0, HEADER_BYTES);
  const { totalSectors, offMultiplier, tracks, batSize } = parseHeader(first);
  const size = batEntryOffset(batSize);
  let headerSize = roundUp(size, MEM_ALIGN);
  const firstView = view(first);
  // Sectors where the header read has bytes: QEMU compares the two units as they are.
  let dataEnd = firstView.getUint32(H.dataOff, true) || roundUp(size, SECTOR);
  if (dataEnd < headerSize) headerSize = size;
  if (headerSize > REQUEST_MAX_BYTES) throw new BlkioError('EIO', `Could not open '${file.node.filename}': ${errno('EIO').message}`);
  // A hostile header can announce a BAT of 2 GiB in a tiny file: only the bytes the file has are read.
  const stored = Math.min(headerSize, roundUp(Math.max(file.getLength(), MEM_ALIGN), DIRTY_BLOCK));
  const header = await readBytes(file, 0, stored);
  const s: ParallelsState = {
    file, header, headerView: view(header), headerSize, batSize, tracks, offMultiplier, totalSectors, dataEnd,
    preallocSectors: 0, preallocMode: 'falloc', unclean: false, dirtyBlocks: new Set(), lock: new Mutex(),
  };
  for (let i = 0; i < storedBatEntries(s); i++) {
    const sector = clusterSector(s, i);
    if (sector >= s.dataEnd) s.dataEnd = sector + tracks;
  }
  dataEnd = s.dataEnd;
  if (firstView.getUint32(H.inuse, true) === INUSE_MAGIC) {
    s.unclean = true;
    if (!node.readOnly && !node.layer.openForCheck) {
      throw new BlkioError('EACCES', 'parallels: Image was not closed correctly; cannot be opened read/write');
    }
  }
  s.preallocSectors = Math.max(tracks, Math.floor(Number(opts['prealloc-size'] ?? DEFAULT_PREALLOC_SIZE) / SECTOR));
  s.preallocMode = parsePreallocMode(opts['prealloc-mode']);
  const extOff = s.headerView.getBigUint64(H.extOff, true);
  if (extOff !== 0n) {
    // The extension (dirty bitmaps) would go stale under writes: QEMU reads it only read-only.
    if (node.readOnly) await checkFormatExtension(file, Number(extOff) * SECTOR, tracks * SECTOR, totalSectors);
    else node.layer.warn('warning: Format Extension ignored in RW mode');
  }
  if (!node.readOnly) {
    takeFilePermissions(node, file);
    s.headerView.setUint32(H.inuse, INUSE_MAGIC, true);
    await writeHeader(s);
  }
  // Checked after the open as QEMU's block layer does, which closes the image again.
  if (totalSectors * SECTOR > MAX_NODE_LENGTH) {
    if (!node.readOnly) await closeImage(s);
    throw new BlkioError('EFBIG', 'Could not refresh total sector count: File too large');
  }
  return s;
}

interface ParallelsCreateSettings {
  size: number;
  clusterSize: number;
}

function createSettings(request: CreateRequest): ParallelsCreateSettings {
  const size = roundUp(request.size, SECTOR);
  const clusterSize = roundUp(Number(request.options.cluster_size ?? DEFAULT_CLUSTER_SIZE), SECTOR);
  if (clusterSize >= Number(2n ** 63n / BigInt(MAX_CLUSTERS))) throw new BlkioError('EINVAL', 'Cluster size is too large');
  if (size >= MAX_CLUSTERS * clusterSize) throw new BlkioError('E2BIG', 'Image size is too large for this cluster size');
  return { size, clusterSize };
}

function newHeader({ size, clusterSize }: ParallelsCreateSettings): { header: Uint8Array; dataSectors: number } {
  const entries = Math.ceil(size / clusterSize);
  const dataSectors = (Math.ceil(batEntryOffset(entries) / clusterSize) * clusterSize) / SECTOR;
  const header = new Uint8Array(SECTOR);
  const v = view(header);
  header.set(Array.from(MAGIC_CLUSTERS, (c) => c.charCodeAt(0)), H.magic);
  v.setUint32(H.version, VERSION, true);
  // The geometry is not used; QEMU writes 16 heads of 32 sectors.
  v.setUint32(H.heads, 16, true);
  v.setUint32(H.cylinders, Math.floor(size / SECTOR / 16 / 32), true);
  v.setUint32(H.tracks, clusterSize / SECTOR, true);
  v.setUint32(H.batEntries, entries, true);
  v.setBigUint64(H.nbSectors, BigInt(size / SECTOR), true);
  v.setUint32(H.dataOff, dataSectors, true);
  return { header, dataSectors };
}

export const parallelsDriver: BlockDriver<ParallelsState> = {
  name: 'parallels',
  kind: 'format',
  supportsBacking: true,
  cannotReopen: true,
  options: { 'prealloc-size': { type: 'size' }, 'prealloc-mode': { type: 'string' } },

  probe(header) {
    if (header.length < HEADER_BYTES) return 0;
    const magic = magicOf(header);
    const known = magic === MAGIC_SECTORS || magic === MAGIC_CLUSTERS;
    return known && view(header).getUint32(H.version, true) === VERSION ? 100 : 0;
  },

  async open(node, ctx) {
    const file = (await ctx.openChild('file', ROLE_IMAGE))!;
    return openImage(node, file, ctx.opts);
  },

  async close(node) {
    const s = node.state;
    if (!s || node.readOnly) return;
    await s.lock.run(() => closeImage(s));
  },

  refreshLimits(node) {
    node.limits = { ...limitsFrom(node.state.file.node), requestAlignment: SECTOR };
  },

  getLength: (node) => node.state.totalSectors * SECTOR,

  allocatedSize: (node) => fileAllocatedSize(node.state.file),

  async read(node, offset, bytes, buf) {
    const s = node.state;
    for (let done = 0; done < bytes;) {
      const { host, count } = await s.lock.run(async () => mapRun(s, (offset + done) / SECTOR, (bytes - done) / SECTOR));
      const n = count * SECTOR;
      const piece = buf.subarray(done, done + n);
      if (host >= 0) await s.file.read(host * SECTOR, n, piece);
      else if (node.backing) await node.backing.read(offset + done, n, piece);
      else piece.fill(0);
      done += n;
    }
  },

  async write(node, offset, bytes, buf) {
    const s = node.state;
    for (let done = 0; done < bytes;) {
      const sector = (offset + done) / SECTOR;
      const { host, count } = await s.lock.run(async () => {
        const run = mapRun(s, sector, (bytes - done) / SECTOR);
        return run.host >= 0 ? run : { host: await allocateRun(node, sector, run.count), count: run.count };
      });
      const n = count * SECTOR;
      await s.file.write(host * SECTOR, n, buf.subarray(done, done + n));
      done += n;
    }
  },

  async flush(node) {
    const s = node.state;
    await s.lock.run(() => writeBat(s));
  },

  blockStatusNow(node, offset, bytes) {
    const s = node.state;
    const { host, count } = mapRun(s, offset / SECTOR, Math.ceil(bytes / SECTOR));
    const pnum = Math.min(count * SECTOR, bytes);
    if (host < 0) return { status: 0, pnum };
    return { status: STATUS_DATA | STATUS_OFFSET_VALID, pnum, map: host * SECTOR, file: s.file.node };
  },

  async check(node, repair, report): Promise<CheckResult> {
    const s = node.state;
    return s.lock.run(async () => {
      const fixErrors = repair === 'all';
      const fixLeaks = repair !== undefined;
      const clusterSize = s.tracks * SECTOR;
      const size = s.file.getLength();
      const res: CheckResult = {
        corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0,
        totalClusters: s.batSize, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0,
      };
      if (s.unclean) {
        report(`${fixErrors ? 'Repairing' : 'ERROR'} image was not closed correctly`);
        res.corruptions++;
        if (fixErrors) {
          // The close marks the image clean.
          res.corruptionsFixed++;
          s.unclean = false;
        }
      }
      let batChanged = false;
      let highOffset = 0;
      let previous = 0;
      for (let i = 0; i < storedBatEntries(s); i++) {
        const offset = clusterSector(s, i) * SECTOR;
        if (offset === 0) {
          previous = 0;
          continue;
        }
        if (offset > size) {
          report(`${fixErrors ? 'Repairing' : 'ERROR'} cluster ${i} is outside image`);
          res.corruptions++;
          if (fixErrors) {
            setBatEntry(s, i, 0);
            res.corruptionsFixed++;
            batChanged = true;
            previous = 0;
            continue;
          }
        }
        res.allocatedClusters++;
        highOffset = Math.max(highOffset, offset);
        if (previous !== 0 && previous + clusterSize !== offset) res.fragmentedClusters++;
        previous = offset;
      }
      if (batChanged) {
        try {
          await s.file.write(0, s.header.length, s.header);
          if (s.headerSize > s.header.length) await s.file.writeZeroes(s.header.length, s.headerSize - s.header.length, 0);
          await s.file.flush();
          s.dirtyBlocks.clear();
        } catch (e) {
          res.checkErrors++;
          throw e;
        }
      }
      res.imageEndOffset = highOffset + clusterSize;
      if (size > res.imageEndOffset) {
        const count = Math.ceil((size - res.imageEndOffset) / clusterSize);
        report(`${fixLeaks ? 'Repairing' : 'ERROR'} space leaked at the end of the image ${size - res.imageEndOffset}`);
        res.leaks += count;
        if (fixLeaks) {
          try {
            await s.file.truncate(res.imageEndOffset, true);
          } catch (e) {
            node.layer.warn(toBlkioError(e).message);
            res.checkErrors++;
            throw e;
          }
          res.leaksFixed += count;
        }
      }
      return res;
    });
  },

  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'cluster_size', type: 'size', default: DEFAULT_CLUSTER_SIZE, help: 'Parallels image cluster size' },
  ],

  async create(file, request) {
    const settings = createSettings(request);
    const { header, dataSectors } = newHeader(settings);
    try {
      await file.truncate(0, false);
      await file.write(0, SECTOR, header);
      if (dataSectors > 1) await file.writeZeroes(SECTOR, (dataSectors - 1) * SECTOR, 0);
    } catch (e) {
      throw toBlkioError(e).prepend('Failed to create Parallels image: ');
    }
  },
};
