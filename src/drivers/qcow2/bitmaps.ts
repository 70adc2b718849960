/**
 * The persistent bitmap directory: where the bitmaps header extension says it is, and its
 * entries (table offset u64, table size u32, flags u32, type u8, granularity bits u8, name size
 * u16, extra data size u32, then extra data and name, each entry padded to 8 bytes); QEMU's
 * limits on them; and the bitmap tables (one u64 per cluster of bitmap data).
 */
import { BlkioError, errnoError } from '../../errors.js';
import { AUTOCLEAR_BITMAPS, BITMAPS_EXTENSION_SIZE, MAX_BITMAP_DIRECTORY_SIZE } from './header.js';
import type { Qcow2State } from './state.js';

/** Bytes of a directory entry before its extra data and name. */
export const BITMAP_DIR_ENTRY_SIZE = 24;

export const BITMAP_FLAG_IN_USE = 1;
export const BITMAP_FLAG_AUTO = 2;
const BITMAP_RESERVED_FLAGS = ~(BITMAP_FLAG_IN_USE | BITMAP_FLAG_AUTO);
const BITMAP_TYPE_DIRTY_TRACKING = 1;

export const MIN_GRANULARITY_BITS = 9;
export const MAX_GRANULARITY_BITS = 31;
export const MAX_BITMAP_NAME_SIZE = 1023;
/** Entries a bitmap table may have. */
export const MAX_TABLE_SIZE = 0x8000000;
/** Bytes of bitmap data one bitmap may take (QEMU bounds its memory with it). */
export const MAX_PHYS_SIZE = 0x20000000;

/** Bitmap table entries: reserved bits, the data cluster's offset, and "all ones" without one. */
const TABLE_ENTRY_RESERVED_MASK = 0xff000000000001fen;
const TABLE_ENTRY_OFFSET_MASK = 0x00fffffffffffe00n;
const TABLE_ENTRY_ALL_ONES = 1n;

export interface BitmapDirectoryLocation {
  count: number;
  offset: number;
  size: number;
}

export interface BitmapDirectoryEntry {
  tableOffset: number;
  /** Entries (u64 each) of the bitmap table. */
  tableSize: number;
  flags: number;
  granularityBits: number;
  name: string;
}

/** The directory the header extension points at; undefined when the image has no bitmaps. */
export function bitmapDirectoryLocation(s: Qcow2State): BitmapDirectoryLocation | undefined {
  return s.bitmapDirectory;
}

/**
 * The directory an extension describes, as QEMU takes it: without the autoclear bit a program
 * that knows no bitmaps wrote the image last, and they are ignored (and dropped with the next
 * header update).
 */
export function decodeBitmapsExtension(ext: Uint8Array | undefined, autoclearFeatures: bigint): BitmapDirectoryLocation | undefined {
  if (!ext || !(autoclearFeatures & AUTOCLEAR_BITMAPS) || ext.length < BITMAPS_EXTENSION_SIZE) return undefined;
  const v = new DataView(ext.buffer, ext.byteOffset, ext.byteLength);
  const count = v.getUint32(0);
  if (!count) return undefined;
  return { count, size: Number(v.getBigUint64(8)), offset: Number(v.getBigUint64(16)) };
}

export function encodeBitmapsExtension(location: BitmapDirectoryLocation): Uint8Array {
  const ext = new Uint8Array(BITMAPS_EXTENSION_SIZE);
  const v = new DataView(ext.buffer);
  v.setUint32(0, location.count);
  v.setBigUint64(8, BigInt(location.size));
  v.setBigUint64(16, BigInt(location.offset));
  return ext;
}

/** A directory entry as stored: with the fields only the checks read, and where the next entry starts. */
interface StoredDirEntry extends BitmapDirectoryEntry {
  type: number;
  extraDataSize: number;
  next: number;
}

/**
 * The entry at `pos` of a directory, whose first BITMAP_DIR_ENTRY_SIZE bytes lie inside it (a
 * name that overruns it is cut). The name's bytes are taken as they are: a leading BOM stays.
 */
function decodeDirEntry(dir: Uint8Array, d: DataView, pos: number): StoredDirEntry {
  const nameSize = d.getUint16(pos + 18);
  const extraDataSize = d.getUint32(pos + 20);
  const nameStart = pos + BITMAP_DIR_ENTRY_SIZE + extraDataSize;
  return {
    tableOffset: Number(d.getBigUint64(pos)), tableSize: d.getUint32(pos + 8), flags: d.getUint32(pos + 12),
    type: d.getUint8(pos + 16), granularityBits: d.getUint8(pos + 17), extraDataSize,
    name: Buffer.from(dir.subarray(nameStart, nameStart + nameSize)).toString('utf8'),
    next: pos + Math.ceil((BITMAP_DIR_ENTRY_SIZE + extraDataSize + nameSize) / 8) * 8,
  };
}

/** The fields of an entry the driver keeps. */
function keptFields({ tableOffset, tableSize, flags, granularityBits, name }: BitmapDirectoryEntry): BitmapDirectoryEntry {
  return { tableOffset, tableSize, flags, granularityBits, name };
}

/** The entries of a directory read from the image (entries that overrun it are not read). */
export function parseBitmapDirectory(directory: Uint8Array, count: number): BitmapDirectoryEntry[] {
  const d = new DataView(directory.buffer, directory.byteOffset, directory.byteLength);
  const entries: BitmapDirectoryEntry[] = [];
  for (let i = 0, pos = 0; i < count && pos + BITMAP_DIR_ENTRY_SIZE <= directory.length; i++) {
    const entry = decodeDirEntry(directory, d, pos);
    entries.push(keptFields(entry));
    pos = entry.next;
  }
  return entries;
}

/** The image's bitmap directory entries ([] without bitmaps). */
export async function readBitmapDirectory(s: Qcow2State): Promise<BitmapDirectoryEntry[]> {
  const location = bitmapDirectoryLocation(s);
  if (!location) return [];
  const directory = new Uint8Array(location.size);
  await s.file.read(location.offset, location.size, directory);
  return parseBitmapDirectory(directory, location.count);
}

/** Bytes of a directory entry with this name (no extra data). */
export function dirEntrySize(name: string): number {
  return Math.ceil((BITMAP_DIR_ENTRY_SIZE + Buffer.byteLength(name)) / 8) * 8;
}

/** Bytes of bitmap data for `size` guest bytes at this granularity. */
function bitmapBytes(size: number, granularity: number): number {
  return Math.ceil(Math.ceil(size / granularity) / 8);
}

/** Entries of the table of a bitmap over `size` bytes. */
export function bitmapTableSize(size: number, granularity: number, clusterSize: number): number {
  return Math.ceil(bitmapBytes(size, granularity) / clusterSize);
}

/** Whether an entry is as QEMU requires (check_dir_entry); `size` is the image's virtual size. */
export function isValidDirEntry(e: BitmapDirectoryEntry & { type: number; extraDataSize: number }, size: number, clusterSize: number): boolean {
  const nameSize = Buffer.byteLength(e.name);
  if (!e.tableSize || !e.tableOffset || e.tableOffset % clusterSize || e.tableSize > MAX_TABLE_SIZE ||
    e.granularityBits > MAX_GRANULARITY_BITS || e.granularityBits < MIN_GRANULARITY_BITS ||
    e.flags & BITMAP_RESERVED_FLAGS || nameSize > MAX_BITMAP_NAME_SIZE || e.type !== BITMAP_TYPE_DIRTY_TRACKING) {
    return false;
  }
  const physBytes = e.tableSize * clusterSize;
  if (physBytes > MAX_PHYS_SIZE) return false;
  // A bitmap in use may have missed a resize; a consistent one must cover the whole image.
  return (e.flags & BITMAP_FLAG_IN_USE) !== 0 || size <= physBytes * 8 * 2 ** e.granularityBits;
}

/**
 * The directory as QEMU loads it (bitmap_list_load), with its texts: the count must match the
 * header, no extra data, every entry valid.
 */
export async function loadBitmapDirectory(s: Qcow2State): Promise<BitmapDirectoryEntry[]> {
  const location = bitmapDirectoryLocation(s);
  if (!location) return [];
  if (location.size === 0) throw new BlkioError('EINVAL', 'Requested bitmap directory size is zero');
  if (location.size > MAX_BITMAP_DIRECTORY_SIZE) throw new BlkioError('EINVAL', 'Requested bitmap directory size is too big');
  const dir = new Uint8Array(location.size);
  try {
    await s.file.read(location.offset, location.size, dir);
  } catch (e) {
    throw errnoError('Failed to read bitmap directory', e);
  }
  const d = new DataView(dir.buffer);
  const broken = () => new BlkioError('EINVAL', 'Broken bitmap directory');
  const entries: BitmapDirectoryEntry[] = [];
  let pos = 0;
  while (pos < dir.length) {
    if (pos + BITMAP_DIR_ENTRY_SIZE > dir.length) throw broken();
    if (entries.length + 1 > location.count) throw new BlkioError('EINVAL', 'More bitmaps found than specified in header extension');
    const entry = decodeDirEntry(dir, d, pos);
    if (entry.next > dir.length) throw broken();
    if (entry.extraDataSize) throw new BlkioError('EINVAL', 'Bitmap extra data is not supported');
    if (!isValidDirEntry(entry, s.size, s.clusterSize)) {
      throw new BlkioError('EINVAL', `Bitmap '${cName(entry.name)}' doesn't satisfy the constraints`);
    }
    entries.push(keptFields(entry));
    pos = entry.next;
  }
  if (entries.length !== location.count) throw new BlkioError('EINVAL', 'Less bitmaps found than specified in header extension');
  return entries;
}

/** A name printed with `%.*s`: up to a NUL. */
function cName(name: string): string {
  const nul = name.indexOf('\0');
  return nul < 0 ? name : name.slice(0, nul);
}

/** The directory bytes for these entries (no extra data). */
export function encodeBitmapDirectory(entries: readonly BitmapDirectoryEntry[]): Uint8Array {
  const dir = new Uint8Array(entries.reduce((n, e) => n + dirEntrySize(e.name), 0));
  const d = new DataView(dir.buffer);
  let pos = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, 'utf8');
    d.setBigUint64(pos, BigInt(e.tableOffset));
    d.setUint32(pos + 8, e.tableSize);
    d.setUint32(pos + 12, e.flags);
    d.setUint8(pos + 16, BITMAP_TYPE_DIRTY_TRACKING);
    d.setUint8(pos + 17, e.granularityBits);
    d.setUint16(pos + 18, name.length);
    dir.set(name, pos + BITMAP_DIR_ENTRY_SIZE);
    pos += dirEntrySize(e.name);
  }
  return dir;
}

/** What one bitmap table entry says: a data cluster, all zeroes (0) or all ones (-1). */
export type BitmapTableEntry = number;
export const ALL_ONES: BitmapTableEntry = -1;

/** Read a bitmap table; a reserved bit or unaligned offset fails with EINVAL (check_table_entry). */
export async function readBitmapTable(s: Qcow2State, offset: number, size: number): Promise<BitmapTableEntry[]> {
  const raw = new Uint8Array(size * 8);
  await s.file.read(offset, raw.length, raw);
  const v = new DataView(raw.buffer);
  const entries: BitmapTableEntry[] = [];
  for (let i = 0; i < size; i++) {
    const entry = v.getBigUint64(i * 8);
    const dataOffset = entry & TABLE_ENTRY_OFFSET_MASK;
    if (entry & TABLE_ENTRY_RESERVED_MASK || (dataOffset && (entry & TABLE_ENTRY_ALL_ONES || dataOffset % BigInt(s.clusterSize)))) {
      throw new BlkioError('EINVAL');
    }
    entries.push(dataOffset ? Number(dataOffset) : entry & TABLE_ENTRY_ALL_ONES ? ALL_ONES : 0);
  }
  return entries;
}

/** A bitmap table as stored (data cluster offsets, 0 for clean clusters). */
export function encodeBitmapTable(entries: readonly number[]): Uint8Array {
  const raw = new Uint8Array(entries.length * 8);
  const v = new DataView(raw.buffer);
  entries.forEach((offset, i) => v.setBigUint64(i * 8, BigInt(offset)));
  return raw;
}

/**
 * QEMU's constraints on a bitmap the image is to store (check_constraints_on_bitmap), for an
 * image of `size` bytes.
 */
export function checkBitmapConstraints(name: string, granularity: number, size: number, clusterSize: number): void {
  const bits = Math.log2(granularity);
  if (bits > MAX_GRANULARITY_BITS) throw new BlkioError('EINVAL', `Granularity exceeds maximum (${2 ** MAX_GRANULARITY_BITS} bytes)`);
  if (bits < MIN_GRANULARITY_BITS) throw new BlkioError('EINVAL', `Granularity is under minimum (${2 ** MIN_GRANULARITY_BITS} bytes)`);
  const bytes = bitmapBytes(size, granularity);
  if (bytes > MAX_PHYS_SIZE || bytes > MAX_TABLE_SIZE * clusterSize) {
    throw new BlkioError('EINVAL', 'Too much space will be occupied by the bitmap. Use larger granularity');
  }
  if (Buffer.byteLength(name) > MAX_BITMAP_NAME_SIZE) {
    throw new BlkioError('EINVAL', `Name length exceeds maximum (${MAX_BITMAP_NAME_SIZE} characters)`);
  }
}
