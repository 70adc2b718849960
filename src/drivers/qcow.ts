/**
 * `qcow`: QEMU's first copy-on-write format (version 1). A 48-byte big-endian header, the
 * backing file name, an L1 table of L2 table offsets and L2 tables of cluster offsets, each
 * placed at the end of the file when first needed; a cluster entry may instead point at a
 * zlib-compressed cluster (top bit set, the compressed size in the bits below). As in QEMU
 * 7.2, table entries are written through one at a time and a new cluster is not filled from
 * the backing file (images with one have clusters of one sector for that reason). AES images
 * encrypt each sector by its guest offset (compressed clusters stay plain, as QEMU stores them).
 */
import { BlkioError, errno } from '../errors.js';
import { ROLE_IMAGE, type BlockDriver, type CreateRequest } from '../block/driver.js';
import type { BdrvChild } from '../block/child.js';
import { limitsFrom, type BlockNode } from '../block/node.js';
import { REQUEST_MAX_BYTES, STATUS_DATA, STATUS_OFFSET_VALID } from '../block/flags.js';
import { Mutex } from '../block/mutex.js';
import { roundUp } from '../arithmetic.js';
import { cString, nameBytes } from '../byte-strings.js';
import { compressCluster, COMPRESSION_ZLIB, decompressCluster } from './cluster-codecs.js';
import { LruMap } from './lru-map.js';
import { fileAllocatedSize, openFailure, readBytes, view } from './format-helpers.js';
import { qcowAesCipher, SECTOR_SIZE as CIPHER_SECTOR, type SectorCipher } from '../crypto/sector-cipher.js';
import { secretData } from '../block/secret.js';
import type { FlatOptions } from '../options/types.js';

const SECTOR = 512;
const HEADER_BYTES = 48;
const MAGIC = 0x514649fb;
const VERSION = 1;
const CRYPT_NONE = 0;
const CRYPT_AES = 1;
const COMPRESSED = 1n << 63n;
/** QEMU reads at most this many bytes of a backing file name. */
const MAX_BACKING_NAME = 1023;
const INT_MAX = 0x7fffffff;
/** How many L2 tables stay in memory, as in QEMU. */
const L2_CACHE_TABLES = 16;

/** Header fields by byte offset (all big endian). */
const H = {
  magic: 0, version: 4, backingFileOffset: 8, backingFileSize: 16, mtime: 20, size: 24, clusterBits: 32, l2Bits: 33,
  cryptMethod: 36, l1TableOffset: 40,
} as const;

interface QcowState {
  file: BdrvChild;
  clusterBits: number;
  clusterSize: number;
  l2Bits: number;
  l2Size: number;
  size: number;
  /** The L1 table as read at open (big-endian offsets of L2 tables): an array of BigInt would not fit a large one in memory. */
  l1: DataView;
  l1Entries: number;
  l1TableOffset: number;
  /** The L2 tables used last, by their offset in the file. */
  l2Tables: LruMap<number, DataView>;
  /** AES images opened with their key; absent also for an AES image opened without I/O (qemu-img info). */
  cipher?: SectorCipher;
  encrypted: boolean;
  /** The last compressed cluster decompressed (by its entry), which a run of small reads keeps using. */
  decompressed?: { entry: bigint; data: Uint8Array };
  lock: Mutex;
}

/** What an L2 entry says about a guest cluster. */
type ClusterEntry =
  | { kind: 'unallocated' }
  | { kind: 'normal'; offset: number }
  | { kind: 'compressed'; entry: bigint };

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

function decodeEntry(entry: bigint): ClusterEntry {
  if (entry === 0n) return { kind: 'unallocated' };
  if (entry & COMPRESSED) return { kind: 'compressed', entry };
  return { kind: 'normal', offset: Number(entry) };
}

async function loadL2(s: QcowState, l2Offset: number): Promise<DataView> {
  let table = s.l2Tables.get(l2Offset);
  if (!table) {
    table = view(await readBytes(s.file, l2Offset, s.l2Size * 8));
    s.l2Tables.set(l2Offset, table);
  }
  return table;
}

function l1Index(s: QcowState, offset: number): number {
  return Math.floor(offset / 2 ** (s.clusterBits + s.l2Bits));
}

function l1Entry(s: QcowState, index: number): number {
  return Number(s.l1.getBigUint64(index * 8));
}

function l2Index(s: QcowState, offset: number): number {
  return Math.floor(offset / s.clusterSize) % s.l2Size;
}

async function lookup(s: QcowState, offset: number): Promise<ClusterEntry> {
  const l2Offset = l1Entry(s, l1Index(s, offset));
  if (l2Offset === 0) return { kind: 'unallocated' };
  return decodeEntry((await loadL2(s, l2Offset)).getBigUint64(l2Index(s, offset) * 8));
}

/** Write one big-endian 64-bit table entry in place, and flush it (QEMU's pwrite_sync). */
async function writeEntry(s: QcowState, at: number, value: bigint): Promise<void> {
  const bytes = new Uint8Array(8);
  view(bytes).setBigUint64(0, value);
  await s.file.write(at, 8, bytes);
  await s.file.flush();
}

/** The L2 table of `offset`, a new empty one at the end of the file when the L1 entry is free. */
async function l2ForWrite(s: QcowState, offset: number): Promise<{ l2Offset: number; table: DataView }> {
  const index = l1Index(s, offset);
  let l2Offset = l1Entry(s, index);
  if (l2Offset !== 0) return { l2Offset, table: await loadL2(s, l2Offset) };
  l2Offset = roundUp(s.file.getLength(), s.clusterSize);
  await writeEntry(s, s.l1TableOffset + index * 8, BigInt(l2Offset));
  const table = new Uint8Array(s.l2Size * 8);
  await s.file.write(l2Offset, table.length, table);
  await s.file.flush();
  // Only now: after a failed write the entry stays free, so the next write allocates afresh.
  s.l1.setBigUint64(index * 8, BigInt(l2Offset));
  s.l2Tables.set(l2Offset, view(table));
  return { l2Offset, table: view(table) };
}

async function decompressed(s: QcowState, entry: bigint): Promise<Uint8Array> {
  if (s.decompressed?.entry !== entry) {
    const shift = BigInt(63 - s.clusterBits);
    const offset = Number(entry & ((1n << shift) - 1n));
    const bytes = Number(entry >> shift) & (s.clusterSize - 1);
    const data = new Uint8Array(s.clusterSize);
    const input = await readBytes(s.file, offset, bytes).catch(() => {
      throw errno('EIO');
    });
    await decompressCluster(COMPRESSION_ZLIB, input, data);
    s.decompressed = { entry, data };
  }
  return s.decompressed.data;
}

/**
 * The host offset for writing guest bytes [offset, offset+bytes) of one cluster: a new cluster
 * at the end of the file (rounded up to a cluster) for an unallocated one, or for a compressed
 * one, which is decompressed into it first unless the write covers it whole.
 */
async function clusterForWrite(s: QcowState, offset: number, bytes: number): Promise<number> {
  const { l2Offset, table } = await l2ForWrite(s, offset);
  const index = l2Index(s, offset);
  const current = decodeEntry(table.getBigUint64(index * 8));
  if (current.kind === 'normal') return current.offset;
  const hostOffset = roundUp(s.file.getLength(), s.clusterSize);
  if (current.kind === 'compressed' && bytes < s.clusterSize) {
    const data = await decompressed(s, current.entry);
    await s.file.write(hostOffset, s.clusterSize, data);
  } else {
    await s.file.truncate(hostOffset + s.clusterSize, false);
    if (s.cipher && bytes < s.clusterSize) await writeEncryptedZeroes(s, offset, bytes, hostOffset);
  }
  table.setBigUint64(index * 8, BigInt(hostOffset));
  await writeEntry(s, l2Offset + index * 8, BigInt(hostOffset));
  return hostOffset;
}

/**
 * The cluster entry at `offset` and how many of `bytes` it covers: following clusters join
 * the run while they are unallocated too, or stored right after it in the file (one read each).
 */
async function run(s: QcowState, offset: number, bytes: number): Promise<{ c: ClusterEntry; n: number }> {
  const c = await lookup(s, offset);
  let n = Math.min(bytes, s.clusterSize - (offset % s.clusterSize));
  if (c.kind === 'compressed') return { c, n };
  while (n < bytes) {
    const next = await lookup(s, offset + n);
    const joins = c.kind === 'unallocated' ? next.kind === 'unallocated'
      : next.kind === 'normal' && next.offset === c.offset + (offset % s.clusterSize) + n;
    if (!joins) break;
    n += Math.min(bytes - n, s.clusterSize);
  }
  return { c, n };
}

async function writeData(s: QcowState, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  s.decompressed = undefined;
  await perCluster(s, offset, bytes, async (at, done, n) => {
    const hostOffset = await s.lock.run(() => clusterForWrite(s, at, n));
    if (hostOffset % SECTOR) throw errno('EIO');
    let data = buf.subarray(done, done + n);
    if (s.cipher) {
      data = Uint8Array.from(data);
      s.cipher.encrypt(data, at / CIPHER_SECTOR);
    }
    await s.file.write(hostOffset + (at % s.clusterSize), n, data);
  });
}

/** The sectors of a new encrypted cluster outside the guest bytes [offset, offset+bytes) hold encrypted zeroes, one write each. */
async function writeEncryptedZeroes(s: QcowState, offset: number, bytes: number, hostOffset: number): Promise<void> {
  const clusterStart = offset - (offset % s.clusterSize);
  const start = offset % s.clusterSize;
  for (let i = 0; i < s.clusterSize; i += SECTOR) {
    if (i >= start && i < start + bytes) continue;
    const sector = new Uint8Array(SECTOR);
    s.cipher!.encrypt(sector, (clusterStart + i) / CIPHER_SECTOR);
    await s.file.write(hostOffset + i, SECTOR, sector);
  }
}

/** Run `each` over the pieces of a request, one cluster at a time. */
async function perCluster(
  s: QcowState, offset: number, bytes: number, each: (at: number, done: number, n: number) => Promise<void>,
): Promise<void> {
  for (let done = 0; done < bytes;) {
    const at = offset + done;
    const n = Math.min(bytes - done, s.clusterSize - (at % s.clusterSize));
    await each(at, done, n);
    done += n;
  }
}

/** The header checks of QEMU's open, in its order. */
function checkHeader(v: DataView): void {
  if (v.getUint32(H.magic) !== MAGIC) throw invalid('Image not in qcow format');
  const version = v.getUint32(H.version);
  if (version !== VERSION) {
    const hints = version === 2 || version === 3 ? ["Try the 'qcow2' driver instead."] : [];
    throw new BlkioError('ENOTSUP', `qcow (v${VERSION}) does not support qcow version ${version}`, hints);
  }
  if (v.getBigUint64(H.size) <= 1n) throw invalid('Image size is too small (must be at least 2 bytes)');
  const clusterBits = v.getUint8(H.clusterBits);
  if (clusterBits < 9 || clusterBits > 16) throw invalid('Cluster size must be between 512 and 64k');
  // l2_bits counts 8-byte entries.
  const l2Bits = v.getUint8(H.l2Bits);
  if (l2Bits < 9 - 3 || l2Bits > 16 - 3) throw invalid('L2 table size must be between 512 and 64k');
}

/**
 * The cipher of an AES image, checked against the `encrypt.*` options in QEMU's order: none
 * without encryption, none either when opened without I/O, else keyed by the key secret.
 */
function openEncryption(node: BlockNode<QcowState>, cryptMethod: number, options: FlatOptions, withoutIo: boolean): SectorCipher | undefined {
  const format = options.format;
  if (cryptMethod === CRYPT_NONE) {
    if (format !== undefined) throw invalid(`No encryption in image header, but options specified format '${String(format)}'`);
    return undefined;
  }
  if (cryptMethod !== CRYPT_AES) throw invalid('invalid encryption method in qcow header');
  if (format !== undefined && format !== 'aes') throw invalid(`Header reported 'aes' encryption format but options specify '${String(format)}'`);
  if (withoutIo) return undefined;
  const id = options['key-secret'];
  if (id === undefined) throw invalid("Parameter 'encrypt.key-secret' is required for cipher");
  return qcowAesCipher(secretData((name) => node.layer.objects.get(name), String(id)));
}

async function openImage(node: BlockNode<QcowState>, file: BdrvChild, encryptOptions: FlatOptions, withoutIo: boolean): Promise<QcowState> {
  const v = view(await readBytes(file, 0, HEADER_BYTES));
  checkHeader(v);
  const cipher = openEncryption(node, v.getUint32(H.cryptMethod), encryptOptions, withoutIo);
  const clusterBits = v.getUint8(H.clusterBits);
  const l2Bits = v.getUint8(H.l2Bits);
  const size = v.getBigUint64(H.size);
  const shift = BigInt(clusterBits + l2Bits);
  if (size > (1n << 64n) - 1n - (1n << shift)) throw invalid('Image too large');
  const l1Size = Number((size + (1n << shift) - 1n) >> shift);
  if (l1Size > Math.floor(INT_MAX / 8)) throw invalid('Image too large');
  const l1TableOffset = Number(v.getBigUint64(H.l1TableOffset));
  // The read is refused as one over the block layer's request limit.
  if (l1Size * 8 > REQUEST_MAX_BYTES) throw errno('EIO');
  const l1Bytes = view(await readBytes(file, l1TableOffset, l1Size * 8));
  const backingOffset = Number(v.getBigUint64(H.backingFileOffset));
  if (backingOffset !== 0) {
    const length = v.getUint32(H.backingFileSize);
    if (length > MAX_BACKING_NAME) throw invalid('Backing file name too long');
    const name = await readBytes(file, backingOffset, length);
    node.backingFile = cString(name);
  }
  return {
    file, clusterBits, clusterSize: 2 ** clusterBits, l2Bits, l2Size: 2 ** l2Bits,
    // The disk is a whole number of sectors; a size in between loses its last bytes.
    size: Number(size / BigInt(SECTOR)) * SECTOR,
    l1: l1Bytes, l1Entries: l1Size, l1TableOffset, l2Tables: new LruMap(L2_CACHE_TABLES), cipher, encrypted: v.getUint32(H.cryptMethod) !== CRYPT_NONE, lock: new Mutex(),
  };
}

interface QcowCreateSettings {
  size: number;
  backingFile?: string;
  /** The AES key secret's ID, for an encrypted image. */
  keySecret?: string;
}

function createSettings(request: CreateRequest): QcowCreateSettings {
  const o = request.options;
  const size = roundUp(request.size, SECTOR);
  if (size === 0) throw invalid('Image size is too small, cannot be zero length');
  const format = o['encrypt.format'] ?? (o.encryption === true ? 'aes' : undefined);
  if (format !== undefined && format !== 'aes') throw invalid('Unsupported encryption format');
  const keySecret = o['encrypt.key-secret'] as string | undefined;
  if (format !== undefined && keySecret === undefined) throw invalid("Parameter 'encrypt.key-secret' is required for cipher");
  return { size, backingFile: o.backing_file as string | undefined, keySecret: format === undefined ? undefined : keySecret };
}

/** Header, backing file name and an empty L1 table, in whole sectors as QEMU writes them. */
function newImage({ size, backingFile, keySecret }: QcowCreateSettings): { header: Uint8Array; name: Uint8Array; l1Offset: number; l1Bytes: number } {
  const header = new Uint8Array(HEADER_BYTES);
  const v = view(header);
  v.setUint32(H.magic, MAGIC);
  v.setUint32(H.version, VERSION);
  v.setBigUint64(H.size, BigInt(size));
  // A vvfat directory as backing file is not recorded.
  const name = backingFile !== undefined && backingFile !== 'fat:' ? nameBytes(backingFile) : new Uint8Array(0);
  if (name.length) {
    v.setBigUint64(H.backingFileOffset, BigInt(HEADER_BYTES));
    v.setUint32(H.backingFileSize, name.length);
  }
  // With a backing file, one-sector clusters spare copying what a write leaves of a cluster.
  const [clusterBits, l2Bits] = backingFile !== undefined ? [9, 12] : [12, 9];
  v.setUint8(H.clusterBits, clusterBits);
  v.setUint8(H.l2Bits, l2Bits);
  const l1Offset = roundUp(HEADER_BYTES + name.length, 8);
  v.setBigUint64(H.l1TableOffset, BigInt(l1Offset));
  v.setUint32(H.cryptMethod, keySecret === undefined ? CRYPT_NONE : CRYPT_AES);
  const l1Size = Math.ceil(size / 2 ** (clusterBits + l2Bits));
  return { header, name, l1Offset, l1Bytes: roundUp(l1Size * 8, SECTOR) };
}

export const qcowDriver: BlockDriver<QcowState> = {
  name: 'qcow',
  kind: 'format',
  supportsBacking: true,
  options: {},

  probe(header) {
    if (header.length < HEADER_BYTES) return 0;
    const v = view(header);
    return v.getUint32(H.magic) === MAGIC && v.getUint32(H.version) === VERSION ? 100 : 0;
  },

  async open(node, ctx) {
    const encrypt = ctx.takeOptions('encrypt');
    const file = (await ctx.openChild('file', ROLE_IMAGE))!;
    return openImage(node, file, encrypt, ctx.withoutIo).catch((e: unknown) => {
      throw openFailure(file, e);
    });
  },

  async reopen() {},

  refreshLimits(node) {
    node.limits = { ...limitsFrom(node.state.file.node), requestAlignment: SECTOR };
  },

  getLength: (node) => node.state.size,

  allocatedSize: (node) => fileAllocatedSize(node.state.file),

  async read(node, offset, bytes, buf) {
    const s = node.state;
    for (let done = 0; done < bytes;) {
      const { c, n } = await s.lock.run(() => run(s, offset + done, bytes - done));
      const at = offset + done;
      const piece = buf.subarray(done, done + n);
      if (c.kind === 'unallocated') {
        if (node.backing) await node.backing.read(at, n, piece);
        else piece.fill(0);
      } else if (c.kind === 'compressed') {
        const inCluster = at % s.clusterSize;
        piece.set((await s.lock.run(() => decompressed(s, c.entry))).subarray(inCluster, inCluster + n));
      } else {
        if (c.offset % SECTOR) throw errno('EIO');
        await s.file.read(c.offset + (at % s.clusterSize), n, piece);
        s.cipher?.decrypt(piece, at / CIPHER_SECTOR);
      }
      done += n;
    }
  },

  write: (node, offset, bytes, buf) => writeData(node.state, offset, bytes, buf),

  /**
   * One whole cluster (or the image's last, partial one), stored compressed right at the end
   * of the file when that saves at least a byte. Anything else is refused as QEMU does, an
   * empty request too unless it is at the image's end (so qemu-img convert -c, which ends
   * with an empty one at offset 0, fails as QEMU's does).
   */
  async writeCompressed(node, offset, bytes, buf) {
    const s = node.state;
    const lastPartial = bytes < s.clusterSize && offset + bytes === s.size;
    if (bytes !== s.clusterSize && !lastPartial) throw errno('EINVAL');
    // An empty request at the end writes nothing. QEMU 7.2 stores a compressed zero cluster for
    // it: over the last cluster's data, or through an L1 entry read past the table's end when
    // the end is on an L2 table's boundary (the only offset whose L1 index is out of bounds).
    if (bytes === 0) return;
    const cluster = new Uint8Array(s.clusterSize);
    cluster.set(buf.subarray(0, bytes));
    const compressed = await compressCluster(COMPRESSION_ZLIB, cluster);
    if (!compressed) {
      await writeData(s, offset, bytes, buf);
      return;
    }
    await s.lock.run(async () => {
      const { l2Offset, table } = await l2ForWrite(s, offset);
      // Always appended: QEMU 7.2 writes over a normal cluster with the entry left normal, and
      // over a compressed one with its old size kept, which both corrupt the cluster.
      const index = l2Index(s, offset);
      const hostOffset = s.file.getLength();
      const entry = COMPRESSED | (BigInt(compressed.length) << BigInt(63 - s.clusterBits)) | BigInt(hostOffset);
      table.setBigUint64(index * 8, entry);
      await writeEntry(s, l2Offset + index * 8, entry);
      await s.file.write(hostOffset, compressed.length, compressed);
    });
  },

  async blockStatus(node, offset, bytes) {
    const s = node.state;
    const pnum = Math.min(bytes, s.clusterSize - (offset % s.clusterSize));
    const c = await s.lock.run(() => lookup(s, offset));
    if (c.kind === 'unallocated') return { status: 0, pnum };
    if (c.kind === 'compressed' || s.encrypted) return { status: STATUS_DATA, pnum };
    return { status: STATUS_DATA | STATUS_OFFSET_VALID, pnum, map: c.offset + (offset % s.clusterSize), file: s.file.node };
  },

  getInfo: (node) => ({ clusterSize: node.state.clusterSize, encrypted: node.state.encrypted }),

  async makeEmpty(node) {
    const s = node.state;
    await s.lock.run(async () => {
      const l1Bytes = s.l1Entries * 8;
      new Uint8Array(s.l1.buffer, s.l1.byteOffset, l1Bytes).fill(0);
      await s.file.write(s.l1TableOffset, l1Bytes, new Uint8Array(l1Bytes));
      await s.file.flush();
      await s.file.truncate(s.l1TableOffset + l1Bytes, false);
      s.l2Tables.clear();
      s.decompressed = undefined;
    });
  },

  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'backing_file', type: 'string', help: 'File name of a base image' },
    { name: 'backing_fmt', type: 'string', help: 'Format of the backing image' },
    { name: 'encryption', type: 'bool', help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)" },
    { name: 'encrypt.format', type: 'string', help: "Encrypt the image, format choices: 'aes'" },
    { name: 'encrypt.key-secret', type: 'string', help: 'ID of the secret that provides the AES encryption key' },
  ],

  async create(file, request) {
    const settings = createSettings(request);
    const layer = file.node.layer;
    // The key is only checked: the data is keyed by it when written.
    if (settings.keySecret !== undefined) secretData((id) => layer.objects.get(id), settings.keySecret);
    const { header, name, l1Offset, l1Bytes } = newImage(settings);
    await file.write(0, HEADER_BYTES, header);
    if (name.length) await file.write(HEADER_BYTES, name.length, name);
    const zeroSector = new Uint8Array(SECTOR);
    for (let at = 0; at < l1Bytes; at += SECTOR) await file.write(l1Offset + at, SECTOR, zeroSector);
  },
};
