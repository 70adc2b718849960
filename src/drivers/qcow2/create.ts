/**
 * `qemu-img create -f qcow2`: the option list in QEMU's order with its validation texts, and
 * the creation steps QEMU 7.2 takes (minimal header, one refcount table and block, open,
 * reference the first three clusters, full header, resize with preallocation, backing file,
 * encryption),
 * so the file comes out byte for byte the same.
 */
import { BlkioError } from '../../errors.js';
import type { BdrvChild } from '../../block/child.js';
import type { CreateOptionSpec, CreateRequest } from '../../block/driver.js';
import { checkNewLength } from '../../block/io.js';
import { LUKS_CIPHER_CREATE_OPTIONS } from '../../crypto/luks.js';
import {
  AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, COMPRESSION_NAMES, INCOMPAT_DATA_FILE, HEADER_SIZE_V3, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2, MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS, encodeHeader, type Qcow2Header,
} from './header.js';
import { loadState, markClean, updateHeader } from './open.js';
import { encryptionCreateSettings, setUpEncryption, type EncryptionCreate } from './encryption.js';
import { allocClusters } from './refcount.js';
import { PREALLOC_MODES, truncateImage } from './truncate.js';
import { BLOCKDEV_DRIVERS } from '../blockdev-schema.js';

const DEFAULT_CLUSTER_SIZE = 65536;

const ENCRYPTION_OPTIONS: CreateOptionSpec[] = [
  { name: 'encryption', type: 'bool', help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)" },
  { name: 'encrypt.format', type: 'string', help: "Encrypt the image, format choices: 'aes', 'luks'" },
  { name: 'encrypt.key-secret', type: 'string', help: 'ID of secret providing qcow AES key or LUKS passphrase' },
  ...LUKS_CIPHER_CREATE_OPTIONS.map((spec) => ({ ...spec, name: `encrypt.${spec.name}` })),
];

/** In the order QEMU prints them in the `Formatting ...` line. */
export const QCOW2_CREATE_OPTIONS: readonly CreateOptionSpec[] = [
  ...ENCRYPTION_OPTIONS,
  { name: 'cluster_size', type: 'size', default: DEFAULT_CLUSTER_SIZE, help: 'qcow2 cluster size' },
  { name: 'extended_l2', type: 'bool', default: false, help: 'Extended L2 tables' },
  { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, metadata, falloc, full)' },
  { name: 'compression_type', type: 'string', default: 'zlib', help: 'Compression method used for image cluster compression' },
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'compat', type: 'string', help: 'Compatibility level (v2 [0.10] or v3 [1.1])' },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
  { name: 'data_file', type: 'string', help: 'File name of an external data file' },
  { name: 'data_file_raw', type: 'bool', help: 'The external data file must stay valid as a raw image' },
  { name: 'lazy_refcounts', type: 'bool', default: false, help: 'Postpone refcount updates' },
  { name: 'refcount_bits', type: 'number', default: 16, help: 'Width of a reference count entry in bits' },
];

/** qcow2 versions by the names `compat=` takes (create and amend; measure knows fewer). */
export const VERSIONS: Record<string, number> = { '0.10': 2, v2: 2, '1.1': 3, v3: 3 };

interface Qcow2CreateSettings {
  version: number;
  clusterBits: number;
  extendedL2: boolean;
  preallocation: string;
  lazyRefcounts: boolean;
  refcountOrder: number;
  compressionType: number;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  dataFileRaw: boolean;
  encryption?: EncryptionCreate;
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** A cluster size QEMU accepts (with extended L2: big enough for 32 subclusters); returns its bits. */
export function checkClusterSize(clusterSize: number, extendedL2: boolean): number {
  const clusterBits = Math.log2(clusterSize);
  if (!Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw invalid(`Cluster size must be a power of two between ${2 ** MIN_CLUSTER_BITS} and ${2 ** (MAX_CLUSTER_BITS - 10)}k`);
  }
  if (extendedL2 && clusterSize < 512 * 32) {
    throw invalid(`Extended L2 entries are only supported with cluster sizes of at least ${512 * 32} bytes`);
  }
  return clusterBits;
}

export function checkRefcountWidth(refcountBits: number): void {
  if (refcountBits > 64 || refcountBits < 1 || (refcountBits & (refcountBits - 1)) !== 0) {
    throw invalid('Refcount width must be a power of two and may not exceed 64 bits');
  }
}

/** Check the options in the order QEMU does (QAPI conversion first, then qcow2's rules). */
export function createSettings(o: CreateRequest['options']): Qcow2CreateSettings {
  // QEMU renames `encryption=on` to `encrypt.format` before it reads any option.
  if (o.encryption === true && o['encrypt.format'] !== undefined) {
    throw invalid("'encrypt.format' and its alias 'encryption' can't be used at the same time");
  }
  const compat = o.compat as string | undefined;
  if (compat !== undefined && !(compat in VERSIONS)) throw invalid(`Parameter 'version' does not accept value '${compat}'`);
  const backingFmt = o.backing_fmt as string | undefined;
  if (backingFmt !== undefined && !BLOCKDEV_DRIVERS.includes(backingFmt)) {
    throw invalid(`Parameter 'backing-fmt' does not accept value '${backingFmt}'`);
  }
  const encryption = encryptionCreateSettings(o);
  const preallocation = (o.preallocation as string | undefined) ?? 'off';
  if (!(PREALLOC_MODES as readonly string[]).includes(preallocation)) {
    throw invalid(`Parameter 'preallocation' does not accept value '${preallocation}'`);
  }
  const compressionName = o.compression_type as string | undefined;
  if (compressionName !== undefined && !(COMPRESSION_NAMES as readonly string[]).includes(compressionName)) {
    throw invalid(`Parameter 'compression-type' does not accept value '${compressionName}'`);
  }

  const version = compat === undefined ? 3 : VERSIONS[compat];
  const clusterSize = (o.cluster_size as number | undefined) ?? DEFAULT_CLUSTER_SIZE;
  const extendedL2 = (o.extended_l2 as boolean | undefined) ?? false;
  if (extendedL2 && version < 3) {
    throw invalid('Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const clusterBits = checkClusterSize(clusterSize, extendedL2);
  const backingFile = o.backing_file as string | undefined;
  const backingFormat = o.backing_fmt as string | undefined;
  if (backingFile !== undefined && preallocation !== 'off' && !extendedL2) {
    throw invalid('Backing file and preallocation can only be used at the same time if extended_l2 is on');
  }
  if (backingFormat !== undefined && backingFile === undefined) throw invalid('Backing format cannot be used without backing file');
  const lazyRefcounts = (o.lazy_refcounts as boolean | undefined) ?? false;
  if (version < 3 && lazyRefcounts) {
    throw invalid('Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const refcountBits = (o.refcount_bits as number | undefined) ?? 16;
  checkRefcountWidth(refcountBits);
  if (version < 3 && refcountBits !== 16) {
    throw invalid('Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)');
  }
  if (o.data_file_raw === true && o.data_file === undefined) throw invalid('data-file-raw requires data-file');
  const dataFile = o.data_file as string | undefined;
  if (dataFile !== undefined && version < 3) {
    throw invalid('External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)');
  }
  const dataFileRaw = o.data_file_raw === true;
  if (dataFileRaw && dataFile === undefined) throw invalid('data-file-raw requires data-file');
  if (dataFileRaw && backingFile !== undefined) throw invalid('Backing file and data-file-raw cannot be used at the same time');
  let compressionType = 0;
  if (compressionName !== undefined && compressionName !== 'zlib') {
    if (version < 3) {
      throw invalid('Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)');
    }
    compressionType = COMPRESSION_NAMES.indexOf(compressionName as 'zstd');
  }
  return {
    version, clusterBits, extendedL2,
    // Every cluster of a raw data file must be mapped for the image to read as the file does.
    preallocation: dataFileRaw && preallocation === 'off' ? 'metadata' : preallocation,
    lazyRefcounts, refcountOrder: Math.log2(refcountBits), compressionType, backingFile, backingFormat, dataFile, dataFileRaw,
    encryption,
  };
}

export async function createImage(file: BdrvChild, request: CreateRequest): Promise<void> {
  const c = createSettings(request.options);
  if (c.dataFile === undefined) return layOutImage(file, undefined, c, request.size);
  if (!request.withNewFile) throw new BlkioError('ENOTSUP', 'External data files cannot be created here');
  await request.withNewFile(c.dataFile, (dataFile) => layOutImage(file, dataFile, c, request.size));
}

/** Write a new image into the empty `file`, its guest data going to `dataFile` when there is one. */
async function layOutImage(file: BdrvChild, dataFile: BdrvChild | undefined, c: Qcow2CreateSettings, size: number): Promise<void> {
  const clusterSize = 2 ** c.clusterBits;

  // A minimal header and one refcount table with one (still empty) refcount block.
  const header: Qcow2Header = {
    version: c.version, backingFileOffset: 0, backingFileSize: 0, clusterBits: c.clusterBits, size: 0, cryptMethod: 0,
    l1Size: 0, l1TableOffset: 0, refcountTableOffset: clusterSize, refcountTableClusters: 1, nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: (dataFile ? INCOMPAT_DATA_FILE : 0n) | (c.compressionType ? INCOMPAT_COMPRESSION : 0n) |
      (c.extendedL2 ? INCOMPAT_EXTL2 : 0n),
    compatibleFeatures: c.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: c.dataFileRaw ? AUTOCLEAR_DATA_FILE_RAW : 0n,
    refcountOrder: c.refcountOrder, headerLength: HEADER_SIZE_V3, compressionType: c.compressionType,
  };
  const first = new Uint8Array(clusterSize);
  // The first write always carries all fields, whatever the version.
  first.set(encodeHeader({ ...header, version: 3 }));
  new DataView(first.buffer).setUint32(4, c.version);
  await file.write(0, clusterSize, first);
  const tables = new Uint8Array(2 * clusterSize);
  new DataView(tables.buffer).setBigUint64(0, BigInt(2 * clusterSize));
  await file.write(clusterSize, 2 * clusterSize, tables);

  const s = await loadState(file, { readOnly: false, opts: {}, discardUnmap: false });
  if (dataFile) {
    s.dataFile = dataFile;
    s.dataFileName = dataFile.node.filename;
  }
  await allocClusters(s, 3 * clusterSize);
  await updateHeader(s);
  // QEMU grows the new image through the generic truncate, which checks the size first.
  try {
    checkNewLength(size);
  } catch (e) {
    throw e instanceof BlkioError ? e.prepend('Could not resize image: ') : e;
  }
  await truncateImage(s, size, c.preallocation);
  if (c.backingFile !== undefined) {
    s.backingFile = c.backingFile;
    s.backingFormat = c.backingFormat;
    await updateHeader(s);
  }
  if (c.encryption) {
    const layer = file.node.layer;
    const set = await setUpEncryption(c.encryption, (id) => layer.objects.get(id), async (area) => {
      const offset = await allocClusters(s, area.length);
      const clusters = new Uint8Array(Math.ceil(area.length / clusterSize) * clusterSize);
      clusters.set(area);
      await file.write(offset, clusters.length, clusters);
      return offset;
    });
    s.header.cryptMethod = set.cryptMethod;
    s.cryptoExtension = set.cryptoExtension;
    await updateHeader(s);
  }
  await s.l2Cache.flush();
  await s.refcountCache.flush();
  await markClean(s);
}
