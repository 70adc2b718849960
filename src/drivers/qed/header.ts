/**
 * The QED header (64 little-endian bytes at offset 0) and the rules QEMU 7.2 holds its fields to.
 * Sizes and offsets are bytes, except `tableSize` and `headerSize`, which count clusters.
 */
import { getU64, setU64, view } from '../format-helpers.js';

export const QED_MAGIC = 0x00444551;
export const HEADER_BYTES = 64;

/** Feature bits: a backing file is named; the image may be inconsistent; the backing file is raw (not probed). */
export const F_BACKING_FILE = 0x1n;
export const F_NEED_CHECK = 0x2n;
export const F_BACKING_FORMAT_NO_PROBE = 0x4n;
const KNOWN_FEATURES = F_BACKING_FILE | F_NEED_CHECK | F_BACKING_FORMAT_NO_PROBE;

export const MIN_CLUSTER_SIZE = 4096;
export const MAX_CLUSTER_SIZE = 64 * 1024 * 1024;
export const DEFAULT_CLUSTER_SIZE = 65536;
export const MIN_TABLE_SIZE = 1;
export const MAX_TABLE_SIZE = 16;
export const DEFAULT_TABLE_SIZE = 4;
/** QEMU reads the backing file name into a PATH_MAX buffer with its NUL. */
export const BACKING_NAME_MAX = 4095;

export interface QedHeader {
  clusterSize: number;
  tableSize: number;
  headerSize: number;
  features: bigint;
  compatFeatures: bigint;
  autoclearFeatures: bigint;
  l1TableOffset: number;
  imageSize: number;
  backingFilenameOffset: number;
  backingFilenameSize: number;
}

export function magicOf(bytes: Uint8Array): number {
  return bytes.length >= 4 ? view(bytes).getUint32(0, true) : 0;
}

export function parseHeader(bytes: Uint8Array): QedHeader {
  const v = view(bytes);
  return {
    clusterSize: v.getUint32(4, true),
    tableSize: v.getUint32(8, true),
    headerSize: v.getUint32(12, true),
    features: v.getBigUint64(16, true),
    compatFeatures: v.getBigUint64(24, true),
    autoclearFeatures: v.getBigUint64(32, true),
    l1TableOffset: getU64(v, 40),
    imageSize: getU64(v, 48),
    backingFilenameOffset: v.getUint32(56, true),
    backingFilenameSize: v.getUint32(60, true),
  };
}

export function serializeHeader(h: QedHeader): Uint8Array {
  const bytes = new Uint8Array(HEADER_BYTES);
  const v = view(bytes);
  v.setUint32(0, QED_MAGIC, true);
  v.setUint32(4, h.clusterSize, true);
  v.setUint32(8, h.tableSize, true);
  v.setUint32(12, h.headerSize, true);
  v.setBigUint64(16, h.features, true);
  v.setBigUint64(24, h.compatFeatures, true);
  v.setBigUint64(32, h.autoclearFeatures, true);
  setU64(v, 40, h.l1TableOffset);
  setU64(v, 48, h.imageSize);
  v.setUint32(56, h.backingFilenameOffset, true);
  v.setUint32(60, h.backingFilenameSize, true);
  return bytes;
}

export function unknownFeatures(h: QedHeader): bigint {
  return h.features & ~KNOWN_FEATURES;
}

function isPowerOfTwo(n: number): boolean {
  return (n & (n - 1)) === 0;
}

export function isClusterSizeValid(n: number): boolean {
  return n >= MIN_CLUSTER_SIZE && n <= MAX_CLUSTER_SIZE && isPowerOfTwo(n);
}

export function isTableSizeValid(n: number): boolean {
  return n >= MIN_TABLE_SIZE && n <= MAX_TABLE_SIZE && isPowerOfTwo(n);
}

/**
 * The largest image the two tables can map, as QEMU computes it in 64 bits: large clusters
 * overflow it to 0, so that they fit no image but an empty one.
 */
export function maxImageSize(clusterSize: number, tableSize: number): bigint {
  const entries = BigInt((tableSize * clusterSize) / 8);
  return (entries * entries * BigInt(clusterSize)) & 0xffffffffffffffffn;
}

export function isImageSizeValid(size: number, clusterSize: number, tableSize: number): boolean {
  return size % 512 === 0 && BigInt(size) <= maxImageSize(clusterSize, tableSize);
}
