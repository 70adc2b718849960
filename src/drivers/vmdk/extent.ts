/**
 * VMDK extents: flat ones (a window into a file) and sparse ones (VMDK4 `KDMV` and VMDK3 `COWD`
 * headers, a grain directory (L1) of grain tables (L2) mapping grains of the guest disk to
 * sectors of the file, optionally compressed grains with markers, as streamOptimized images
 * keep them). Lookups and allocation follow QEMU 7.2: a new grain goes at the end of the file,
 * its unwritten parts zeroed, before its table entry (both tables) is written and flushed.
 */
import { BlkioError, errnoError } from '../../errors.js';
import type { BdrvChild } from '../../block/child.js';
import { lazyBuiltin } from '../../lazy-builtin.js';
import { view } from '../format-helpers.js';

const zlib = lazyBuiltin<typeof import('node:zlib')>('node:zlib');

export const SECTOR = 512;
export const VMDK4_MAGIC = 0x4b444d56;
export const VMDK3_MAGIC = 0x434f5744;
export const FLAG_NL_DETECT = 1 << 0;
export const FLAG_RGD = 1 << 1;
export const FLAG_ZERO_GRAIN = 1 << 2;
export const FLAG_COMPRESS = 1 << 16;
export const FLAG_MARKER = 1 << 17;
export const COMPRESSION_DEFLATE = 1;
const GD_AT_END = 0xffffffffffffffffn;
/** A grain table entry that reads as zeroes (with the zeroed-grain flag). */
export const GTE_ZEROED = 1;
const MAX_EXTENT_SECTORS = 2 ** 32;
const MARKER_FOOTER = 3;
const MARKER_END_OF_STREAM = 0;
/** The byte offsets of VMDK4 header fields, magic included. */
export const V4 = {
  version: 4, flags: 8, capacity: 12, granularity: 20, descOffset: 28, descSize: 36, gtesPerGt: 44,
  rgdOffset: 48, gdOffset: 56, grainOffset: 64, checkBytes: 73, compressAlgorithm: 77,
} as const;

export interface Extent {
  file: BdrvChild;
  flat: boolean;
  compressed: boolean;
  hasMarker: boolean;
  hasZeroGrain: boolean;
  /** The descriptor's extent type; undefined for the extent of a monolithic sparse file. */
  type?: string;
  sectors: number;
  /** First guest sector past this extent. */
  endSector: number;
  /** Where a flat extent's data starts in its file (bytes). */
  flatStart: number;
  l1: Uint32Array;
  /** The redundant grain directory, updated alongside (absent without one). */
  l1Backup?: Uint32Array;
  l1EntrySectors: number;
  l2Size: number;
  clusterSectors: number;
  /** Sector where the next grain goes. */
  nextClusterSector: number;
  /** Grain tables read so far, by file sector. */
  l2Cache: Map<number, Uint32Array>;
}

/** Reads the backing file's data for the parts of a new grain the write leaves out. */
export type BackingRead = (offset: number, bytes: number, buf: Uint8Array) => Promise<void>;

/** Where a grain's entry is: its grain table (file sector) and index, and the directory index. */
export interface GrainSlot {
  l1Index: number;
  l2Sector: number;
  l2Index: number;
}

/** `slot` is known wherever the grain has a table. */
export type GrainLookup =
  | { kind: 'unallocated'; slot?: GrainSlot } | { kind: 'zeroed'; slot?: GrainSlot } | { kind: 'error' }
  | { kind: 'allocated'; offset: number; newAllocation?: boolean; slot?: GrainSlot };

async function readBytes(file: BdrvChild, offset: number, bytes: number): Promise<Uint8Array> {
  const buf = new Uint8Array(bytes);
  if (bytes) await file.read(offset, bytes, buf);
  return buf;
}

/** The first megabyte of a file (the descriptor or sparse header), refusing files under 4 bytes. */
export async function readStart(file: BdrvChild, offset: number): Promise<Uint8Array> {
  const size = file.getLength();
  if (size < 4) throw new BlkioError('EINVAL', 'File is too small, not a valid image');
  return readBytes(file, offset, Math.min(size, (1 << 20) - 1));
}

interface ExtentGeometry {
  sectors: number;
  l1Offset: number;
  l1BackupOffset: number;
  l1Size: number;
  l2Size: number;
  clusterSectors: number;
}

/** A sparse extent after its header: QEMU's sanity limits, then the grain directories. */
async function sparseExtent(file: BdrvChild, g: ExtentGeometry, startSector: number): Promise<Extent> {
  if (g.clusterSectors > 0x200000) throw new BlkioError('EFBIG', 'Invalid granularity, image may be corrupt');
  if (g.l1Size > 32 * 1024 * 1024) throw new BlkioError('EFBIG', 'L1 size too big');
  const fileSectors = Math.ceil(file.getLength() / SECTOR);
  const readTable = async (offset: number, what: string): Promise<Uint32Array> => {
    const bytes = await readBytes(file, offset, g.l1Size * 4).catch((e: unknown) => {
      throw errnoError(`Could not read ${what} from extent '${file.node.filename}'`, e);
    });
    const v = view(bytes);
    return Uint32Array.from({ length: g.l1Size }, (_, i) => v.getUint32(i * 4, true));
  };
  const l1 = await readTable(g.l1Offset, 'l1 table');
  const l1Backup = g.l1BackupOffset ? await readTable(g.l1BackupOffset, 'l1 backup table') : undefined;
  return {
    file, flat: false, compressed: false, hasMarker: false, hasZeroGrain: false, sectors: g.sectors,
    endSector: startSector + g.sectors, flatStart: 0, l1, l1Backup, l1EntrySectors: g.l2Size * g.clusterSectors,
    l2Size: g.l2Size, clusterSectors: g.clusterSectors,
    nextClusterSector: Math.ceil(fileSectors / g.clusterSectors) * g.clusterSectors, l2Cache: new Map(),
  };
}

export function flatExtent(file: BdrvChild, sectors: number, flatSector: number, startSector: number, type: string): Extent {
  return {
    file, flat: true, compressed: false, hasMarker: false, hasZeroGrain: false, type, sectors, endSector: startSector + sectors,
    flatStart: flatSector * SECTOR, l1: new Uint32Array(0), l1EntrySectors: 0, l2Size: 0, clusterSectors: sectors,
    nextClusterSector: 0, l2Cache: new Map(),
  };
}

/** A COWD (VMDK3) sparse extent. */
export async function openVmdk3(file: BdrvChild, start: Uint8Array, startSector: number): Promise<Extent> {
  const v = view(start);
  return sparseExtent(file, {
    sectors: v.getUint32(12, true), l1Offset: v.getUint32(20, true) * SECTOR, l1BackupOffset: 0,
    l1Size: v.getUint32(24, true), l2Size: 4096, clusterSectors: v.getUint32(16, true),
  }, startSector);
}

/** The VMDK4 header of a streamOptimized file that keeps it in its footer. */
async function footerHeader(file: BdrvChild): Promise<Uint8Array> {
  const fileBytes = Math.ceil(file.getLength() / SECTOR) * SECTOR;
  const footer = await readBytes(file, fileBytes - 1536, 1536).catch((e: unknown) => {
    throw errnoError('Failed to read footer', e);
  });
  const v = view(footer);
  const valid = v.getUint32(512, false) === VMDK4_MAGIC && v.getUint32(8, true) === 0 && v.getUint32(12, true) === MARKER_FOOTER &&
    v.getBigUint64(1024, true) === 0n && v.getUint32(1032, true) === 0 && v.getUint32(1036, true) === MARKER_END_OF_STREAM;
  if (!valid) throw new BlkioError('EINVAL', 'Invalid footer');
  return footer.subarray(512, 1024);
}

/**
 * A KDMV (VMDK4) sparse extent, or `descriptor` when the header only points at an embedded
 * descriptor (capacity 0): the caller opens that instead.
 */
export async function openVmdk4(
  file: BdrvChild, start: Uint8Array, startSector: number, readOnly: boolean,
): Promise<Extent | { descriptor: Uint8Array }> {
  let header = start.subarray(0, 512);
  let v = view(header);
  if (v.getBigUint64(V4.capacity, true) === 0n && v.getBigUint64(V4.descOffset, true) !== 0n) {
    return { descriptor: await readStart(file, Number(v.getBigUint64(V4.descOffset, true)) * SECTOR) };
  }
  if (v.getBigUint64(V4.gdOffset, true) === GD_AT_END) {
    header = await footerHeader(file);
    v = view(header);
  }
  const version = v.getUint32(V4.version, true);
  const flags = v.getUint32(V4.flags, true);
  const compressed = v.getUint16(V4.compressAlgorithm, true) === COMPRESSION_DEFLATE;
  if (version > 3) throw new BlkioError('ENOTSUP', `Unsupported VMDK version ${version}`);
  if (version === 3 && !readOnly && !compressed) throw new BlkioError('EINVAL', 'VMDK version 3 must be read only');
  const gtes = v.getUint32(V4.gtesPerGt, true);
  if (gtes > 512) throw new BlkioError('EINVAL', 'L2 table size too big');
  const granularity = v.getBigUint64(V4.granularity, true);
  // QEMU keeps the product in 32 bits.
  const l1EntrySectors = Number((BigInt(gtes) * granularity) & 0xffffffffn);
  if (l1EntrySectors === 0) throw new BlkioError('EINVAL', 'L1 entry size is invalid');
  const capacity = v.getBigUint64(V4.capacity, true);
  const l1Size = Number(((capacity + BigInt(l1EntrySectors) - 1n) / BigInt(l1EntrySectors)) & 0xffffffffn);
  const grainOffset = v.getBigUint64(V4.grainOffset, true);
  if (BigInt(Math.ceil(file.getLength() / SECTOR)) < grainOffset) {
    throw new BlkioError('EINVAL', `File truncated, expecting at least ${BigInt.asIntN(64, grainOffset * 512n)} bytes`);
  }
  const extent = await sparseExtent(file, {
    sectors: Number(capacity), l1Offset: Number(v.getBigUint64(V4.gdOffset, true)) * SECTOR,
    l1BackupOffset: flags & FLAG_RGD ? Number(v.getBigUint64(V4.rgdOffset, true)) * SECTOR : 0,
    l1Size, l2Size: gtes, clusterSectors: Number(granularity),
  }, startSector);
  extent.compressed = compressed;
  extent.hasMarker = (flags & FLAG_MARKER) !== 0;
  extent.hasZeroGrain = (flags & FLAG_ZERO_GRAIN) !== 0;
  return extent;
}

async function grainTable(e: Extent, l2Sector: number): Promise<Uint32Array> {
  let table = e.l2Cache.get(l2Sector);
  if (!table) {
    const v = view(await readBytes(e.file, l2Sector * SECTOR, e.l2Size * 4));
    table = Uint32Array.from({ length: e.l2Size }, (_, i) => v.getUint32(i * 4, true));
    e.l2Cache.set(l2Sector, table);
  }
  return table;
}

/**
 * Where the grain holding extent-relative byte `offset` is. With `allocate`, an unallocated
 * (or zeroed) grain gets space at the end of the file, filled but for [skipStart, skipEnd)
 * of the grain (which the caller writes) from `backing`, or zeroed; its table entry is the
 * caller's to write.
 */
export async function lookupGrain(
  e: Extent, offset: number, allocate: boolean, skipStart = 0, skipEnd = 0, backing?: BackingRead,
): Promise<GrainLookup> {
  if (e.flat) return { kind: 'allocated', offset: e.flatStart };
  const sector = Math.floor(offset / SECTOR);
  const l1Index = Math.floor(sector / e.l1EntrySectors);
  if (l1Index >= e.l1.length) return { kind: 'error' };
  const l2Sector = e.l1[l1Index]!;
  if (!l2Sector) return { kind: 'unallocated' };
  let table: Uint32Array;
  try {
    table = await grainTable(e, l2Sector);
  } catch {
    return { kind: 'error' };
  }
  const slot = { l1Index, l2Sector, l2Index: Math.floor(sector / e.clusterSectors) % e.l2Size };
  const entry = table[slot.l2Index]!;
  const zeroed = e.hasZeroGrain && entry === GTE_ZEROED;
  if (entry && !zeroed) return { kind: 'allocated', offset: entry * SECTOR, slot };
  if (!allocate) return { kind: zeroed ? 'zeroed' : 'unallocated', slot };
  if (e.nextClusterSector >= MAX_EXTENT_SECTORS) return { kind: 'error' };
  const grainSector = e.nextClusterSector;
  e.nextClusterSector += e.clusterSectors;
  const grainBytes = e.clusterSectors * SECTOR;
  const whole = new Uint8Array(grainBytes);
  const at = grainSector * SECTOR;
  // QEMU reads the backing file at the extent-relative offset (the same for one extent).
  const grainStart = offset - (offset % grainBytes);
  const copy = zeroed ? undefined : backing;
  if (skipStart > 0) {
    await copy?.(grainStart, skipStart, whole);
    await e.file.write(at, skipStart, whole);
  }
  if (skipEnd < grainBytes) {
    await copy?.(grainStart + skipEnd, grainBytes - skipEnd, whole.subarray(skipEnd));
    await e.file.write(at + skipEnd, grainBytes - skipEnd, whole.subarray(skipEnd));
  }
  return { kind: 'allocated', offset: at, newAllocation: true, slot };
}

/** Point a grain table entry (and its backup) at `value`, and flush, as QEMU does. */
export async function updateGrainEntry(e: Extent, slot: GrainSlot, value: number): Promise<void> {
  const entry = new Uint8Array(4);
  view(entry).setUint32(0, value, true);
  await e.file.write(slot.l2Sector * SECTOR + slot.l2Index * 4, 4, entry);
  if (e.l1Backup) await e.file.write(e.l1Backup[slot.l1Index]! * SECTOR + slot.l2Index * 4, 4, entry);
  await e.file.flush();
  const cached = e.l2Cache.get(slot.l2Sector);
  if (cached) cached[slot.l2Index] = value;
}

/** Read from a grain at `grainOffset`: directly, or inflated when the extent is compressed. */
export async function readGrain(e: Extent, grainOffset: number, inGrain: number, bytes: number, out: Uint8Array): Promise<void> {
  if (!e.compressed) {
    await e.file.read(grainOffset + inGrain, bytes, out);
    return;
  }
  const grainBytes = e.clusterSectors * SECTOR;
  const raw = await readBytes(e.file, grainOffset, grainBytes * 2);
  let data = raw;
  if (e.hasMarker) {
    const length = view(raw).getUint32(8, true);
    if (!length || length > raw.length) throw new BlkioError('EINVAL');
    data = raw.subarray(12, 12 + length);
  }
  let plain: Uint8Array;
  try {
    plain = zlib().inflateSync(data, { maxOutputLength: grainBytes });
  } catch {
    throw new BlkioError('EINVAL');
  }
  if (inGrain + bytes > plain.length) throw new BlkioError('EINVAL');
  out.set(plain.subarray(inGrain, inGrain + bytes));
}

/**
 * Write into a grain: directly, or (compressed extents) one whole grain, deflated behind a
 * marker; the next grain then starts right after it.
 */
export async function writeGrain(
  e: Extent, grainOffset: number, inGrain: number, data: Uint8Array, guestOffset: number,
): Promise<void> {
  let payload = data;
  if (e.compressed) {
    const grainBytes = e.clusterSectors * SECTOR;
    const partialEnd = data.length < grainBytes && guestOffset + data.length !== e.endSector * SECTOR;
    if (inGrain || data.length > grainBytes || partialEnd || !e.hasMarker) throw new BlkioError('EINVAL');
    const deflated = zlib().deflateSync(data);
    payload = new Uint8Array(12 + deflated.length);
    view(payload).setBigUint64(0, BigInt(Math.floor(guestOffset / SECTOR)), true);
    view(payload).setUint32(8, deflated.length, true);
    payload.set(deflated, 12);
  }
  const at = grainOffset + inGrain;
  await e.file.write(at, payload.length, payload);
  const endSector = Math.ceil((at + payload.length) / SECTOR);
  e.nextClusterSector = e.compressed ? endSector : Math.max(e.nextClusterSector, endSector);
}
