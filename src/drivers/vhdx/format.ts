/**
 * VHDX on-disk structures (Microsoft's VHDX specification 1.0): the file identifier, the two
 * headers, the region table, the metadata table and its items, the BAT, with their field
 * offsets and CRC-32C checksums. All fields are little endian.
 */
import { crc32c } from '../../crc32c.js';
import { view } from '../format-helpers.js';

const KiB = 1024;
export const MiB = 1024 * 1024;

export const FILE_SIGNATURE = 'vhdxfile';
export const HEADER1_OFFSET = 64 * KiB;
export const HEADER2_OFFSET = 128 * KiB;
export const REGION_TABLE_OFFSET = 192 * KiB;
export const REGION_TABLE2_OFFSET = 256 * KiB;
/** The header section (file identifier, headers, region tables) fills the first MiB. */
export const HEADER_SECTION_END = MiB;
/** A header's checksum covers 4 KiB; a region table's and the metadata table's 64 KiB. */
export const HEADER_BLOCK_BYTES = 4 * KiB;
export const TABLE_BYTES = 64 * KiB;
/** The defined part of a header, the bytes written when one is updated. */
export const HEADER_BYTES = 80;

export const HEADER_SIGNATURE = 0x64616568; // 'head'
export const REGION_SIGNATURE = 0x69676572; // 'regi'
export const METADATA_SIGNATURE = 'metadata';

/** Header fields by byte offset. */
export const H = {
  signature: 0, checksum: 4, sequence: 8, fileWriteGuid: 16, dataWriteGuid: 32, logGuid: 48,
  logVersion: 64, version: 66, logLength: 68, logOffset: 72,
} as const;

export const REGION_ENTRY_REQUIRED = 1;
/** Region and metadata table entries alike. */
const TABLE_ENTRY_BYTES = 32;
export const METADATA_IS_VIRTUAL_DISK = 2;
export const METADATA_IS_REQUIRED = 4;
/** The metadata table with its most entries: a 32-byte header and 2047 entries. */
export const METADATA_TABLE_MAX_BYTES = TABLE_ENTRY_BYTES * 2048;

export const PARAMS_LEAVE_BLOCKS_ALLOCATED = 1;
export const PARAMS_HAS_PARENT = 2;

export const BLOCK_SIZE_MIN = MiB;
export const BLOCK_SIZE_MAX = 256 * MiB;
/** Payload sectors one sector bitmap block covers: the chunk ratio is this many sectors' worth of blocks. */
const MAX_SECTORS_PER_BLOCK = 1 << 23;

/** Payload block states (the BAT entry's low three bits). */
export const BLOCK_NOT_PRESENT = 0;
export const BLOCK_UNDEFINED = 1;
export const BLOCK_ZERO = 2;
export const BLOCK_UNMAPPED_V095 = 3;
export const BLOCK_UNMAPPED = 5;
export const BLOCK_FULLY_PRESENT = 6;
export const BLOCK_STATE_MASK = 7;

/** GUIDs as their 16 bytes on disk (the first three fields little endian), in hex. */
export const GUID = {
  bat: '6677c22d23f600429d64115e9bfd4a08',
  metadata: '06a27c8b90479a4bb8fe575f050f886e',
  fileParameters: '3767a1ca36fa434db3b633f0aa44e76b',
  virtualDiskSize: '2442a52f1bcd7648b2115dbed83bf4b8',
  page83: 'ab12cabee6b2234593efc309e000c746',
  logicalSectorSize: '1dbf41816fa90947ba47f233a8faab5f',
  physicalSectorSize: 'c748a3cd5d4471449cc9e9885251c556',
  parentLocator: '2d5fd3a80bb34d45abf7d3d84834ab0c',
} as const;

function hexOf(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

export function guidBytes(hex: string): Uint8Array {
  return Uint8Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(i * 2, i * 2 + 2), 16));
}

/** A random (version 4) UUID's bytes, as QEMU stores a new GUID. */
export function newGuid(): Uint8Array {
  const u = globalThis.crypto.getRandomValues(new Uint8Array(16));
  u[6] = (u[6]! & 0x0f) | 0x40;
  u[8] = (u[8]! & 0x3f) | 0x80;
  return u;
}

export function isZeroGuid(bytes: Uint8Array): boolean {
  return bytes.every((b) => b === 0);
}

/** The CRC-32C of `block` with its 4-byte checksum field at `field` taken as zero. */
function checksumOf(block: Uint8Array, field: number): number {
  const copy = block.slice();
  copy.fill(0, field, field + 4);
  return crc32c(copy);
}

export function hasValidChecksum(block: Uint8Array, field: number): boolean {
  return checksumOf(block, field) === view(block).getUint32(field, true);
}

export function setChecksum(block: Uint8Array, field: number): void {
  view(block).setUint32(field, checksumOf(block, field), true);
}

export function headerGuid(header: Uint8Array, field: number): Uint8Array {
  return header.subarray(field, field + 16);
}

/** A 64-bit field as a number; the callers check the ranges where the value could exceed 2^53. */
export function u64(v: DataView, at: number): number {
  return Number(v.getBigUint64(at, true));
}

/** A region table or metadata table entry: a GUID, where its object is, how long, and flags. */
export interface TableEntry {
  guid: string;
  /** In the file (region) or in the metadata region (metadata item). */
  offset: number;
  length: number;
  dataBits: number;
}

/** Entry `index` of a table whose entries (32 bytes each) start at `first`, with an 8- or 4-byte offset. */
function tableEntryAt(table: Uint8Array, first: number, index: number, offsetBytes: 4 | 8): TableEntry {
  const at = first + index * TABLE_ENTRY_BYTES;
  const v = view(table);
  return {
    guid: hexOf(table.subarray(at, at + 16)), offset: offsetBytes === 8 ? u64(v, at + 16) : v.getUint32(at + 16, true),
    length: v.getUint32(at + 16 + offsetBytes, true), dataBits: v.getUint32(at + 20 + offsetBytes, true),
  };
}

export function regionEntryAt(table: Uint8Array, index: number): TableEntry {
  return tableEntryAt(table, 16, index, 8);
}

export function metadataEntryAt(table: Uint8Array, index: number): TableEntry {
  return tableEntryAt(table, 32, index, 4);
}

/** The logical sector size, the only one QEMU 7.2 reads or creates. */
export const SECTOR = 512;

/** The geometry of the payload. */
export interface Geometry {
  blockSize: number;
  /** Payload blocks per sector bitmap block (a power of two). */
  chunkRatio: number;
  virtualDiskSize: number;
}

export function chunkRatioOf(blockSize: number): number {
  return (MAX_SECTORS_PER_BLOCK * SECTOR) / blockSize;
}

/**
 * BAT entries the image has: its payload blocks with a sector bitmap entry after every chunk
 * ratio of them, computed in QEMU's 32-bit arithmetic (an empty disk wraps to a large count).
 */
export function batEntryCount(g: Geometry): number {
  const dataBlocks = Math.ceil(g.virtualDiskSize / g.blockSize) >>> 0;
  const bitmapEntries = Math.floor(((dataBlocks - 1) >>> 0) / g.chunkRatio);
  return (dataBlocks + bitmapEntries) >>> 0;
}

/** The BAT index of a payload block: sector bitmap entries sit between the chunks. */
export function batIndexOf(block: number, chunkRatio: number): number {
  return block + Math.floor(block / chunkRatio);
}
