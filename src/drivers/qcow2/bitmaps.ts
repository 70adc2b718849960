/**
 * The persistent bitmap directory: where the bitmaps header extension says it is, and its
 * entries (table offset u64, table size u32, flags u32, type u8, granularity bits u8, name size
 * u16, extra data size u32, then extra data and name, each entry padded to 8 bytes).
 */
import { AUTOCLEAR_BITMAPS, BITMAPS_EXTENSION_SIZE } from './header.js';
import type { Qcow2State } from './state.js';

/** Bytes of a directory entry before its extra data and name. */
export const BITMAP_DIR_ENTRY_SIZE = 24;

export const BITMAP_FLAG_IN_USE = 1;
export const BITMAP_FLAG_AUTO = 2;

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
  const ext = s.bitmapsExtension;
  if (!ext || !(s.header.autoclearFeatures & AUTOCLEAR_BITMAPS) || ext.length < BITMAPS_EXTENSION_SIZE) return undefined;
  const v = new DataView(ext.buffer, ext.byteOffset, ext.byteLength);
  const count = v.getUint32(0);
  if (!count) return undefined;
  return { count, size: Number(v.getBigUint64(8)), offset: Number(v.getBigUint64(16)) };
}

/** The entries of a directory read from the image (entries that overrun it are not read). */
export function parseBitmapDirectory(directory: Uint8Array, count: number): BitmapDirectoryEntry[] {
  const d = new DataView(directory.buffer, directory.byteOffset, directory.byteLength);
  const decoder = new TextDecoder();
  const entries: BitmapDirectoryEntry[] = [];
  for (let i = 0, pos = 0; i < count && pos + BITMAP_DIR_ENTRY_SIZE <= directory.length; i++) {
    const nameSize = d.getUint16(pos + 18);
    const extraSize = d.getUint32(pos + 20);
    const nameStart = pos + BITMAP_DIR_ENTRY_SIZE + extraSize;
    entries.push({
      tableOffset: Number(d.getBigUint64(pos)),
      tableSize: d.getUint32(pos + 8),
      flags: d.getUint32(pos + 12),
      granularityBits: d.getUint8(pos + 17),
      name: decoder.decode(directory.subarray(nameStart, nameStart + nameSize)),
    });
    pos += Math.ceil((BITMAP_DIR_ENTRY_SIZE + extraSize + nameSize) / 8) * 8;
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
