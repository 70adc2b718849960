/**
 * The qcow2 header: the fixed fields (v2 and v3), the header extensions that follow them, the
 * feature name table, and the header cluster QEMU writes back (qcow2_update_header's layout).
 */
import { BlkioError } from '../../errors.js';
import { cString, latin1CString, nameBytes } from '../../byte-strings.js';
import { COMPRESSION_ZLIB, COMPRESSION_ZSTD } from '../cluster-codecs.js';

/** The header's compression types are the codecs' type numbers. */
export { COMPRESSION_ZLIB, COMPRESSION_ZSTD };

export const QCOW_MAGIC = 0x514649fb;
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** Bytes of the header structure QEMU 7.2 writes for v3 (up to compression_type and its padding). */
export const HEADER_SIZE_V3 = 112;
/** A v2 header ends where the v3 feature fields begin. */
export const HEADER_SIZE_V2 = 72;
export const HEADER_MIN_V3 = 104;

/** Byte offsets of fields QEMU updates in place. */
export const OFFSET_SIZE = 24;
export const OFFSET_L1_SIZE = 36;
export const OFFSET_REFCOUNT_TABLE = 48;
export const OFFSET_INCOMPATIBLE = 72;

export const INCOMPAT_DIRTY = 1n;
export const INCOMPAT_CORRUPT = 2n;
export const INCOMPAT_DATA_FILE = 4n;
export const INCOMPAT_COMPRESSION = 8n;
export const INCOMPAT_EXTL2 = 16n;
export const INCOMPAT_MASK = 0x1fn;
export const COMPAT_LAZY_REFCOUNTS = 1n;
export const AUTOCLEAR_BITMAPS = 1n;
export const AUTOCLEAR_DATA_FILE_RAW = 2n;
export const AUTOCLEAR_MASK = 3n;

export const COMPRESSION_NAMES = ['zlib', 'zstd'] as const;

export const EXT_END = 0;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_CRYPTO_HEADER = 0x0537be77;
/** crypt_method of legacy AES images. */
export const CRYPT_AES = 1;
/** crypt_method of LUKS-encrypted images, the only ones with a crypto header extension. */
export const CRYPT_LUKS = 2;
export const EXT_BITMAPS = 0x23852875;
export const EXT_DATA_FILE = 0x44415441;

/** The bitmaps extension: nb_bitmaps u32, reserved u32, directory size u64, directory offset u64. */
export const BITMAPS_EXTENSION_SIZE = 24;
export const MAX_BITMAPS = 65535;
export const MAX_BITMAP_DIRECTORY_SIZE = 1024 * MAX_BITMAPS;

/** Longest backing format name QEMU keeps (its buffer is 16 bytes with the NUL). */
const BACKING_FORMAT_MAX = 16;
export const BACKING_FILE_MAX = 1023;

export interface Qcow2Header {
  version: number;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
}

/** A 64-bit big-endian field as a number; values past 2^53 become Infinity so range checks fail. */
function u64(view: DataView, offset: number): number {
  const v = view.getBigUint64(offset);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(v);
}

/** Decode the fixed header fields; v2 gets the implied v3 values. */
export function parseHeader(buf: Uint8Array): Qcow2Header {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const version = view.getUint32(4);
  const h: Qcow2Header = {
    version,
    backingFileOffset: u64(view, 8),
    backingFileSize: view.getUint32(16),
    clusterBits: view.getUint32(20),
    size: u64(view, 24),
    cryptMethod: view.getUint32(32),
    l1Size: view.getUint32(36),
    l1TableOffset: u64(view, 40),
    refcountTableOffset: u64(view, 48),
    refcountTableClusters: view.getUint32(56),
    nbSnapshots: view.getUint32(60),
    snapshotsOffset: u64(view, 64),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: HEADER_SIZE_V2,
    compressionType: COMPRESSION_ZLIB,
  };
  if (version >= 3) {
    h.incompatibleFeatures = view.getBigUint64(72);
    h.compatibleFeatures = view.getBigUint64(80);
    h.autoclearFeatures = view.getBigUint64(88);
    h.refcountOrder = view.getUint32(96);
    h.headerLength = view.getUint32(100);
    if (h.headerLength > HEADER_MIN_V3) h.compressionType = buf[104];
  }
  return h;
}

/** The fixed fields as QEMU writes them: 72 bytes for v2, 112 for v3. */
export function encodeHeader(h: Qcow2Header): Uint8Array {
  const out = new Uint8Array(h.version >= 3 ? HEADER_SIZE_V3 : HEADER_SIZE_V2);
  const view = new DataView(out.buffer);
  view.setUint32(0, QCOW_MAGIC);
  view.setUint32(4, h.version);
  view.setBigUint64(8, BigInt(h.backingFileOffset));
  view.setUint32(16, h.backingFileSize);
  view.setUint32(20, h.clusterBits);
  view.setBigUint64(24, BigInt(h.size));
  view.setUint32(32, h.cryptMethod);
  view.setUint32(36, h.l1Size);
  view.setBigUint64(40, BigInt(h.l1TableOffset));
  view.setBigUint64(48, BigInt(h.refcountTableOffset));
  view.setUint32(56, h.refcountTableClusters);
  view.setUint32(60, h.nbSnapshots);
  view.setBigUint64(64, BigInt(h.snapshotsOffset));
  if (h.version >= 3) {
    view.setBigUint64(72, h.incompatibleFeatures);
    view.setBigUint64(80, h.compatibleFeatures);
    view.setBigUint64(88, h.autoclearFeatures);
    view.setUint32(96, h.refcountOrder);
    view.setUint32(100, h.headerLength);
    out[104] = h.compressionType;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Feature name table

export const FEATURE_INCOMPATIBLE = 0;
export const FEATURE_COMPATIBLE = 1;
export const FEATURE_AUTOCLEAR = 2;

export interface FeatureName {
  type: number;
  bit: number;
  name: string;
}

/** The table QEMU 7.2 writes into v3 images with clusters larger than 4 KiB. */
export const KNOWN_FEATURES: readonly FeatureName[] = [
  { type: FEATURE_INCOMPATIBLE, bit: 0, name: 'dirty bit' },
  { type: FEATURE_INCOMPATIBLE, bit: 1, name: 'corrupt bit' },
  { type: FEATURE_INCOMPATIBLE, bit: 2, name: 'external data file' },
  { type: FEATURE_INCOMPATIBLE, bit: 3, name: 'compression type' },
  { type: FEATURE_INCOMPATIBLE, bit: 4, name: 'extended L2 entries' },
  { type: FEATURE_COMPATIBLE, bit: 0, name: 'lazy refcounts' },
  { type: FEATURE_AUTOCLEAR, bit: 0, name: 'bitmaps' },
  { type: FEATURE_AUTOCLEAR, bit: 1, name: 'raw external data' },
];

const FEATURE_ENTRY_SIZE = 48;
const FEATURE_NAME_SIZE = 46;

export function encodeFeatureTable(features: readonly FeatureName[]): Uint8Array {
  const out = new Uint8Array(features.length * FEATURE_ENTRY_SIZE);
  features.forEach((f, i) => {
    out[i * FEATURE_ENTRY_SIZE] = f.type;
    out[i * FEATURE_ENTRY_SIZE + 1] = f.bit;
    out.set(new TextEncoder().encode(f.name).subarray(0, FEATURE_NAME_SIZE), i * FEATURE_ENTRY_SIZE + 2);
  });
  return out;
}

/** Entries up to the first one with an empty name, as QEMU walks the table. */
export function decodeFeatureTable(data: Uint8Array): FeatureName[] {
  const out: FeatureName[] = [];
  for (let pos = 0; pos + FEATURE_ENTRY_SIZE <= data.length; pos += FEATURE_ENTRY_SIZE) {
    const name = latin1CString(data.subarray(pos + 2, pos + FEATURE_ENTRY_SIZE));
    if (name === '') break;
    out.push({ type: data[pos], bit: data[pos + 1], name });
  }
  return out;
}

/** `Unsupported qcow2 feature(s): ...` naming unknown incompatible bits from the image's own table. */
export function unsupportedFeatureMessage(table: readonly FeatureName[], mask: bigint): string {
  const names: string[] = [];
  for (const f of table) {
    const bit = 1n << BigInt(f.bit);
    if (f.type === FEATURE_INCOMPATIBLE && mask & bit) {
      names.push(f.name);
      mask &= ~bit;
    }
  }
  if (mask) names.push(`Unknown incompatible feature: ${mask.toString(16)}`);
  return `Unsupported qcow2 feature(s): ${names.join(', ')}`;
}

// ---------------------------------------------------------------------------------------------
// Header extensions

export interface HeaderExtension {
  magic: number;
  data: Uint8Array;
}

export interface ParsedExtensions {
  backingFormat?: string;
  dataFile?: string;
  featureTable: FeatureName[];
  cryptoHeader?: Uint8Array;
  bitmaps?: Uint8Array;
  /** Extensions QEMU does not know, kept to be written back (in QEMU's reversed order). */
  unknown: HeaderExtension[];
}

/** What the bitmaps extension is judged by, and where its warning goes. */
export interface ExtensionContext {
  header: Pick<Qcow2Header, 'version' | 'autoclearFeatures' | 'cryptMethod'>;
  clusterSize: number;
  /** A warning line (the program name is added) followed by a hint without a newline. */
  warn: (warning: string, hint: string) => void;
}

/**
 * QEMU's checks of the bitmaps extension; without the autoclear bit a program that does not
 * know bitmaps wrote the image last, and the extension is only warned about.
 */
function validateBitmapsExtension(data: Uint8Array, context: ExtensionContext | undefined): void {
  if (data.length !== BITMAPS_EXTENSION_SIZE) throw new BlkioError('EINVAL', 'bitmaps_ext: Invalid extension length');
  if (!context) return;
  if (!(context.header.autoclearFeatures & AUTOCLEAR_BITMAPS)) {
    context.warn(context.header.version < 3
      ? 'warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent'
      : 'warning: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent',
    "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.");
    return;
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const count = view.getUint32(0);
  const directorySize = view.getBigUint64(8);
  if (view.getUint32(4)) throw new BlkioError('EINVAL', 'bitmaps_ext: Reserved field is not zero');
  if (count > MAX_BITMAPS) {
    throw new BlkioError('EINVAL', `bitmaps_ext: Image has ${count} bitmaps, exceeding the QEMU supported maximum of ${MAX_BITMAPS}`);
  }
  if (!count) throw new BlkioError('EINVAL', 'found bitmaps extension with zero bitmaps');
  if (view.getUint32(20) & (context.clusterSize - 1)) throw new BlkioError('EINVAL', 'bitmaps_ext: invalid bitmap directory offset');
  if (directorySize > MAX_BITMAP_DIRECTORY_SIZE) {
    throw new BlkioError('EINVAL', `bitmaps_ext: bitmap directory size (${directorySize}) exceeds the maximum supported size (${MAX_BITMAP_DIRECTORY_SIZE})`);
  }
}

/**
 * Walk the extensions in `[start, end)` of the header cluster `buf`, validating like QEMU
 * (the bitmaps extension fully only with a `context`).
 */
export function parseExtensions(buf: Uint8Array, start: number, end: number, context?: ExtensionContext): ParsedExtensions {
  const result: ParsedExtensions = { featureTable: [], unknown: [] };
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let offset = start;
  while (offset < end) {
    if (offset + 8 > buf.length) throw new BlkioError('EINVAL', 'Header extension too large');
    const magic = view.getUint32(offset);
    const len = view.getUint32(offset + 4);
    offset += 8;
    if (offset > end || len > end - offset) throw new BlkioError('EINVAL', 'Header extension too large');
    const data = buf.subarray(offset, offset + len);
    switch (magic) {
      case EXT_END:
        return result;
      case EXT_BACKING_FORMAT:
        if (len >= BACKING_FORMAT_MAX) {
          throw new BlkioError('EINVAL', `ERROR: ext_backing_format: len=${len} too large (>=${BACKING_FORMAT_MAX})`);
        }
        result.backingFormat = cString(data);
        break;
      case EXT_FEATURE_TABLE:
        result.featureTable = decodeFeatureTable(data);
        break;
      case EXT_CRYPTO_HEADER:
        if (context && context.header.cryptMethod !== CRYPT_LUKS) {
          throw new BlkioError('EINVAL', 'CRYPTO header extension only expected with LUKS encryption method');
        }
        result.cryptoHeader = data.slice();
        break;
      case EXT_BITMAPS:
        validateBitmapsExtension(data, context);
        result.bitmaps = data.slice();
        break;
      case EXT_DATA_FILE:
        result.dataFile = cString(data);
        break;
      default:
        result.unknown.unshift({ magic, data: data.slice() });
    }
    offset += (len + 7) & ~7;
  }
  return result;
}

/** What qcow2_update_header needs besides the fixed fields. */
export interface HeaderContents {
  header: Qcow2Header;
  clusterSize: number;
  unknownHeaderFields: Uint8Array;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  /** The crypto header extension's data: offset and length of the LUKS header. */
  cryptoHeader?: Uint8Array;
  bitmaps?: Uint8Array;
  unknownExtensions: readonly HeaderExtension[];
}

/**
 * The whole header cluster: fixed fields, preserved unknown fields, extensions (backing format,
 * external data file name, crypto header, feature table, bitmaps, unknown ones), end marker, then the backing file name.
 */
export function buildHeaderCluster(c: HeaderContents): Uint8Array {
  const out = new Uint8Array(c.clusterSize);
  const view = new DataView(out.buffer);
  const h = { ...c.header, backingFileOffset: 0, backingFileSize: 0 };
  if (h.version >= 3) h.headerLength = HEADER_SIZE_V3 + c.unknownHeaderFields.length;
  let pos = encodeHeader(h).length;
  const noSpace = (): never => {
    throw new BlkioError('ENOSPC');
  };
  if (pos + c.unknownHeaderFields.length > out.length) noSpace();
  out.set(c.unknownHeaderFields, pos);
  pos += c.unknownHeaderFields.length;
  const addExtension = (magic: number, data: Uint8Array): void => {
    const padded = (data.length + 7) & ~7;
    if (pos + 8 + padded > out.length) noSpace();
    view.setUint32(pos, magic);
    view.setUint32(pos + 4, data.length);
    out.set(data, pos + 8);
    pos += 8 + padded;
  };
  if (c.backingFormat !== undefined) addExtension(EXT_BACKING_FORMAT, nameBytes(c.backingFormat));
  if (c.dataFile !== undefined) addExtension(EXT_DATA_FILE, nameBytes(c.dataFile));
  if (c.cryptoHeader) addExtension(EXT_CRYPTO_HEADER, c.cryptoHeader);
  if (h.version >= 3 && c.clusterSize > 4096) addExtension(EXT_FEATURE_TABLE, encodeFeatureTable(KNOWN_FEATURES));
  if (c.bitmaps) addExtension(EXT_BITMAPS, c.bitmaps);
  for (const ext of c.unknownExtensions) addExtension(ext.magic, ext.data);
  addExtension(EXT_END, new Uint8Array(0));
  if (c.backingFile !== undefined) {
    const name = nameBytes(c.backingFile);
    if (pos + name.length > out.length) noSpace();
    out.set(name, pos);
    h.backingFileOffset = pos;
    h.backingFileSize = name.length;
  }
  out.set(encodeHeader(h), 0);
  return out;
}
