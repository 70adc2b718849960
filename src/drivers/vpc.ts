/**
 * `vpc`: Virtual PC / Hyper-V VHD images (QEMU's block/vpc.c). A fixed image is the raw disk
 * followed by a 512-byte footer; a dynamic one starts with a copy of the footer, a dynamic
 * disk header and the block allocation table (BAT), and stores each allocated block as a
 * sector bitmap followed by the block's data, with the footer after the last block.
 * The disk size comes from the footer's CHS geometry or its current_size field, depending on
 * the tool that made the image (or the `force_size_calc` option).
 */
import { BlkioError, errno } from '../errors.js';
import { ROLE_IMAGE, type BlockDriver, type BlockStatusResult, type CreateRequest } from '../block/driver.js';
import type { BdrvChild } from '../block/child.js';
import { STATUS_DATA, STATUS_OFFSET_VALID, STATUS_RECURSE, STATUS_ZERO } from '../block/flags.js';
import { limitsFrom } from '../block/node.js';
import { crypto } from '../crypto/sector-cipher.js';
import { Mutex } from '../block/mutex.js';
import { fileAllocatedSize, readBytes, view } from './format-helpers.js';

const SECTOR = 512;
const FOOTER_BYTES = 512;
const DYN_HEADER_BYTES = 1024;
const FOOTER_MAGIC = 'conectix';
const DYN_HEADER_MAGIC = 'cxsparse';
const TYPE_FIXED = 2;
const TYPE_DYNAMIC = 3;
const UNALLOCATED = 0xffffffff;
const DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024;
/** The largest geometry (cylinders x heads x sectors): images this big take their size from the footer's current_size. */
const MAX_GEOMETRY = 65535 * 16 * 255;
/** 2040 GiB, the largest disk QEMU opens or creates. */
const MAX_SECTORS = 0xff000000;
/** VHD timestamps count seconds from 2000-01-01. */
const TIMESTAMP_BASE = 946684800;
/** Tools that size their images by current_size rather than geometry (Hyper-V, Disk2VHD, XenServer, blktap, QEMU's force_size). */
const CURRENT_SIZE_CREATORS = ['win ', 'd2v ', 'CTXS', 'tap\0', 'qem2'];

/** Footer field offsets. */
const F = {
  features: 8, version: 12, dataOffset: 16, timestamp: 24, creatorApp: 28, creatorVersion: 32, creatorOs: 36,
  originalSize: 40, currentSize: 48, cylinders: 56, heads: 58, sectorsPerTrack: 59, type: 60, checksum: 64, uuid: 68,
} as const;
/** Dynamic disk header field offsets. */
const D = { dataOffset: 8, tableOffset: 16, version: 24, maxTableEntries: 28, blockSize: 32, checksum: 36 } as const;

interface VpcState {
  file: BdrvChild;
  /** The footer as read (written again after the last block when one is allocated). */
  footer: Uint8Array;
  /** The footer's disk type says fixed: guest offsets are file offsets. */
  fixed: boolean;
  size: number;
  blockSize: number;
  /** Bytes of the sector bitmap before each block's data. */
  bitmapSize: number;
  /** Sector of each block in the file, or UNALLOCATED; empty for images opened as fixed. */
  bat: Uint32Array;
  batOffset: number;
  /** Where the next block goes: the footer's place at the end of a dynamic image. */
  freeDataBlockOffset: number;
  /** The bitmap last marked all-allocated, so that a run of writes to one block marks it once. */
  lastBitmapOffset: number;
  allocation: Mutex;
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** One's complement of the byte sum, taken with the checksum field zeroed. */
function checksum(bytes: Uint8Array, field: number): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) if (i < field || i >= field + 4) sum += bytes[i]!;
  return ~sum >>> 0;
}

function text(bytes: Uint8Array, at: number, length: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + at, length).toString('latin1');
}

/** The footer: at the start of a dynamic image, else at the end (fixed). */
async function readFooter(file: BdrvChild): Promise<{ footer: Uint8Array; atStart: boolean }> {
  const first = await readBytes(file, 0, FOOTER_BYTES);
  if (text(first, 0, 8) === FOOTER_MAGIC) return { footer: first, atStart: true };
  const length = file.getLength();
  if (length >= FOOTER_BYTES) {
    const last = await readBytes(file, length - FOOTER_BYTES, FOOTER_BYTES);
    // Only a fixed image has its footer at the end alone.
    if (text(last, 0, 8) === FOOTER_MAGIC && view(last).getUint32(F.type) === TYPE_FIXED) return { footer: last, atStart: false };
  }
  throw invalid('invalid VPC image');
}

/** The disk size in sectors the footer gives, by geometry or by current_size. */
function footerSectors(footer: Uint8Array, forceSizeCalc: string | undefined): number {
  const v = view(footer);
  const geometry = v.getUint16(F.cylinders) * v.getUint8(F.heads) * v.getUint8(F.sectorsPerTrack);
  const byCreator = CURRENT_SIZE_CREATORS.includes(text(footer, F.creatorApp, 4));
  const useCurrentSize = forceSizeCalc === 'current_size' || (forceSizeCalc !== 'chs' && byCreator) || geometry === MAX_GEOMETRY;
  return useCurrentSize ? Math.floor(Number(v.getBigUint64(F.currentSize)) / SECTOR) : geometry;
}

/** The dynamic disk header and BAT of a dynamic image, checked as QEMU does. */
async function openDynamic(s: VpcState, sectors: number): Promise<void> {
  const header = await readBytes(s.file, Number(view(s.footer).getBigUint64(F.dataOffset)), DYN_HEADER_BYTES).catch(() => {
    throw invalid('Error reading dynamic VHD header');
  });
  if (text(header, 0, 8) !== DYN_HEADER_MAGIC) throw invalid('Invalid header magic');
  const v = view(header);
  s.blockSize = v.getUint32(D.blockSize);
  if (s.blockSize < SECTOR || (s.blockSize & (s.blockSize - 1)) !== 0) throw invalid(`Invalid block size ${s.blockSize}`);
  s.bitmapSize = Math.ceil(s.blockSize / SECTOR / 8 / SECTOR) * SECTOR;
  const entries = v.getUint32(D.maxTableEntries);
  if ((sectors * SECTOR) / s.blockSize > 0xffffffff) throw invalid('Too many blocks');
  if (entries * s.blockSize < sectors * SECTOR) throw invalid('Page table too small');
  if (entries > 0x7fffffff / 4) throw invalid(`Max Table Entries too large (${entries | 0})`);
  s.batOffset = Number(v.getBigUint64(D.tableOffset));
  // A table beyond one request fails its read in the generic layer, as in QEMU.
  const table = await readBytes(s.file, s.batOffset, entries * 4).catch(() => {
    throw invalid('Error reading pagetable');
  });
  const tv = view(table);
  s.bat = new Uint32Array(entries);
  s.freeDataBlockOffset = Math.ceil((s.batOffset + entries * 4) / SECTOR) * SECTOR;
  for (let i = 0; i < entries; i++) {
    const sector = tv.getUint32(i * 4);
    s.bat[i] = sector;
    if (sector !== UNALLOCATED) s.freeDataBlockOffset = Math.max(s.freeDataBlockOffset, sector * SECTOR + s.bitmapSize + s.blockSize);
  }
  if (s.freeDataBlockOffset > s.file.getLength()) {
    throw invalid('block-vpc: free_data_block_offset points after the end of file. The image has been truncated.');
  }
}

/** The block of a guest offset and where in the file its data is (undefined: not allocated). */
function locate(s: VpcState, offset: number): { index: number; inBlock: number; hostOffset: number | undefined } {
  const index = Math.floor(offset / s.blockSize);
  const inBlock = offset % s.blockSize;
  const sector = index < s.bat.length ? s.bat[index]! : UNALLOCATED;
  return { index, inBlock, hostOffset: sector === UNALLOCATED ? undefined : sector * SECTOR + s.bitmapSize + inBlock };
}

/** Mark every sector of the block at `bitmapOffset` as present (QEMU never tracks single sectors). */
async function markBlockWritten(s: VpcState, bitmapOffset: number): Promise<void> {
  if (s.lastBitmapOffset === bitmapOffset) return;
  await s.file.write(bitmapOffset, s.bitmapSize, new Uint8Array(s.bitmapSize).fill(0xff));
  s.lastBitmapOffset = bitmapOffset;
}

/** Give block `index` the space at the footer's place: bitmap, data, then the footer moved after it, and the BAT entry. */
async function allocateBlock(s: VpcState, index: number): Promise<void> {
  const blockOffset = s.freeDataBlockOffset;
  s.bat[index] = blockOffset / SECTOR;
  await s.file.write(blockOffset, s.bitmapSize, new Uint8Array(s.bitmapSize).fill(0xff));
  s.lastBitmapOffset = blockOffset;
  s.freeDataBlockOffset = blockOffset + s.bitmapSize + s.blockSize;
  await s.file.write(s.freeDataBlockOffset, FOOTER_BYTES, s.footer);
  const entry = new Uint8Array(4);
  view(entry).setUint32(0, s.bat[index]!);
  await s.file.write(s.batOffset + index * 4, 4, entry);
}

/** Run `each` over the pieces of a request, one block at a time. */
async function perBlock(
  s: VpcState, offset: number, bytes: number,
  each: (at: number, done: number, length: number) => Promise<void>,
): Promise<void> {
  for (let done = 0; done < bytes;) {
    const at = offset + done;
    const length = Math.min(bytes - done, s.blockSize - (at % s.blockSize));
    await each(at, done, length);
    done += length;
  }
}

/** Sectors of a geometry as the VHD specification derives it from a sector count (capped at the largest). */
function chsGeometry(totalSectors: number): { cylinders: number; heads: number; sectorsPerTrack: number } {
  const sectors = Math.min(totalSectors, MAX_GEOMETRY);
  let sectorsPerTrack: number;
  let heads: number;
  let cylinderTimesHeads: number;
  if (sectors >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylinderTimesHeads = Math.floor(sectors / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylinderTimesHeads = Math.floor(sectors / sectorsPerTrack);
    heads = Math.max(Math.ceil(cylinderTimesHeads / 1024), 4);
    if (cylinderTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylinderTimesHeads = Math.floor(sectors / sectorsPerTrack);
    }
    if (cylinderTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylinderTimesHeads = Math.floor(sectors / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylinderTimesHeads / heads), heads, sectorsPerTrack };
}

interface VpcCreateSettings {
  fixed: boolean;
  forceSize: boolean;
}

function createSettings(options: CreateRequest['options']): VpcCreateSettings {
  const subformat = options.subformat ?? 'dynamic';
  if (subformat !== 'dynamic' && subformat !== 'fixed') throw invalid(`Parameter 'subformat' does not accept value '${String(subformat)}'`);
  return { fixed: subformat === 'fixed', forceSize: options.force_size === true };
}

/**
 * The geometry and size of a new image: the smallest geometry holding the size (rounded up),
 * or, past the largest geometry or with force_size, the size itself in current_size.
 */
function newDiskLayout(size: number, forceSize: boolean): { geometry: ReturnType<typeof chsGeometry>; sectors: number } {
  const requested = Math.ceil(size / SECTOR);
  let geometry = { cylinders: 65535, heads: 16, sectorsPerTrack: 255 };
  if (!forceSize) {
    const wanted = Math.min(requested, MAX_GEOMETRY);
    geometry = { cylinders: 0, heads: 0, sectorsPerTrack: 0 };
    for (let extra = 0; wanted > geometry.cylinders * geometry.heads * geometry.sectorsPerTrack; extra++) geometry = chsGeometry(wanted + extra);
  }
  const geometrySectors = geometry.cylinders * geometry.heads * geometry.sectorsPerTrack;
  if (geometrySectors !== MAX_GEOMETRY) return { geometry, sectors: geometrySectors };
  if (requested > MAX_SECTORS) throw new BlkioError('EFBIG', "The image size is too large for file format 'vpc'");
  return { geometry, sectors: requested };
}

function buildFooter(bytes: number, geometry: ReturnType<typeof chsGeometry>, fixed: boolean, forceSize: boolean): Uint8Array {
  const footer = new Uint8Array(FOOTER_BYTES);
  const v = view(footer);
  const put = (at: number, value: string): void => footer.set(Buffer.from(value, 'latin1'), at);
  put(0, FOOTER_MAGIC);
  v.setUint32(F.features, 2);
  v.setUint32(F.version, 0x00010000);
  v.setBigUint64(F.dataOffset, fixed ? 0xffffffffffffffffn : BigInt(FOOTER_BYTES));
  v.setUint32(F.timestamp, (Math.floor(Date.now() / 1000) - TIMESTAMP_BASE) >>> 0);
  put(F.creatorApp, forceSize ? 'qem2' : 'qemu');
  v.setUint32(F.creatorVersion, 0x00050003);
  put(F.creatorOs, 'Wi2k');
  v.setBigUint64(F.originalSize, BigInt(bytes));
  v.setBigUint64(F.currentSize, BigInt(bytes));
  v.setUint16(F.cylinders, geometry.cylinders);
  v.setUint8(F.heads, geometry.heads);
  v.setUint8(F.sectorsPerTrack, geometry.sectorsPerTrack);
  v.setUint32(F.type, fixed ? TYPE_FIXED : TYPE_DYNAMIC);
  footer.set(Buffer.from(crypto().randomUUID().replaceAll('-', ''), 'hex'), F.uuid);
  v.setUint32(F.checksum, checksum(footer, F.checksum));
  return footer;
}

/** A dynamic image's metadata: footer copy, dynamic disk header, an empty BAT (whole sectors), and the footer. */
function dynamicMetadata(footer: Uint8Array, sectors: number): Uint8Array {
  const entries = Math.ceil(sectors / (DEFAULT_BLOCK_SIZE / SECTOR));
  const batBytes = Math.ceil((entries * 4) / SECTOR) * SECTOR;
  const batOffset = FOOTER_BYTES + DYN_HEADER_BYTES;
  const out = new Uint8Array(batOffset + batBytes + FOOTER_BYTES);
  out.set(footer, 0);
  const header = out.subarray(FOOTER_BYTES, batOffset);
  const v = view(header);
  header.set(Buffer.from(DYN_HEADER_MAGIC, 'latin1'));
  v.setBigUint64(D.dataOffset, 0xffffffffffffffffn);
  v.setBigUint64(D.tableOffset, BigInt(batOffset));
  v.setUint32(D.version, 0x00010000);
  v.setUint32(D.maxTableEntries, entries);
  v.setUint32(D.blockSize, DEFAULT_BLOCK_SIZE);
  v.setUint32(D.checksum, checksum(header, D.checksum));
  out.fill(0xff, batOffset, batOffset + batBytes);
  out.set(footer, batOffset + batBytes);
  return out;
}

export const vpcDriver: BlockDriver<VpcState> = {
  name: 'vpc',
  kind: 'format',
  options: { force_size_calc: { type: 'string' } },

  probe: (header) => (header.length >= 8 && text(header, 0, 8) === FOOTER_MAGIC ? 100 : 0),

  async open(_node, ctx) {
    const forceSizeCalc = ctx.opts.force_size_calc as string | undefined;
    if (forceSizeCalc !== undefined && forceSizeCalc !== 'chs' && forceSizeCalc !== 'current_size') {
      throw invalid(`Invalid size calculation mode: '${forceSizeCalc}'`);
    }
    const file = (await ctx.openChild('file', ROLE_IMAGE))!;
    const { footer, atStart } = await readFooter(file);
    if (checksum(footer, F.checksum) !== view(footer).getUint32(F.checksum)) throw invalid('Incorrect header checksum');
    const sectors = footerSectors(footer, forceSizeCalc);
    if (sectors > MAX_SECTORS) throw new BlkioError('EFBIG', `Could not open '${file.node.filename}': ${errno('EFBIG').message}`);
    const s: VpcState = {
      file, footer, fixed: view(footer).getUint32(F.type) === TYPE_FIXED, size: sectors * SECTOR, blockSize: 0, bitmapSize: 0,
      bat: new Uint32Array(0), batOffset: 0, freeDataBlockOffset: 0, lastBitmapOffset: -1, allocation: new Mutex(),
    };
    if (atStart) await openDynamic(s, sectors);
    return s;
  },

  refreshLimits(node) {
    node.limits = { ...limitsFrom(node.state.file.node), requestAlignment: SECTOR };
  },

  getLength: (node) => node.state.size,

  allocatedSize: (node) => fileAllocatedSize(node.state.file),

  async read(node, offset, bytes, buf) {
    const s = node.state;
    if (s.fixed) return s.file.read(offset, bytes, buf);
    await perBlock(s, offset, bytes, async (at, done, length) => {
      const { hostOffset } = locate(s, at);
      const piece = buf.subarray(done, done + length);
      if (hostOffset === undefined) piece.fill(0);
      else await s.file.read(hostOffset, length, piece);
    });
  },

  async write(node, offset, bytes, buf) {
    const s = node.state;
    if (s.fixed) return s.file.write(offset, bytes, buf);
    await perBlock(s, offset, bytes, async (at, done, length) => {
      let { index, hostOffset } = locate(s, at);
      if (hostOffset === undefined) {
        await s.allocation.run(async () => {
          if (locate(s, at).hostOffset === undefined) await allocateBlock(s, index);
        });
        hostOffset = locate(s, at).hostOffset!;
      } else {
        await markBlockWritten(s, s.bat[index]! * SECTOR);
      }
      await s.file.write(hostOffset, length, buf.subarray(done, done + length));
    });
  },

  /**
   * A fixed image is all data, at the same offsets in the file (whose holes read as zeroes); a
   * dynamic one answers a block at a time, unallocated blocks reading as zeroes.
   */
  blockStatusNow(node, offset, bytes): BlockStatusResult {
    const s = node.state;
    if (s.fixed) return { status: STATUS_DATA | STATUS_OFFSET_VALID | STATUS_RECURSE, pnum: bytes, map: offset, file: s.file.node };
    const first = locate(s, offset);
    const inFirstBlock = Math.min(bytes, s.blockSize - first.inBlock);
    if (first.hostOffset !== undefined) {
      return { status: STATUS_DATA | STATUS_OFFSET_VALID, pnum: inFirstBlock, map: first.hostOffset, file: s.file.node };
    }
    let pnum = inFirstBlock;
    while (pnum < bytes && locate(s, offset + pnum).hostOffset === undefined) pnum += Math.min(bytes - pnum, s.blockSize);
    return { status: STATUS_ZERO, pnum };
  },

  getInfo: (node) => (node.state.fixed ? {} : { clusterSize: node.state.blockSize }),

  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    {
      name: 'subformat', type: 'string',
      help: 'Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ',
    },
    {
      name: 'force_size', type: 'bool',
      help: 'Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation',
    },
  ],

  // QEMU makes the (empty) image file before it reads the options: a bad subformat leaves it behind.
  async create(file, request) {
    const { fixed, forceSize } = createSettings(request.options);
    const { geometry, sectors } = newDiskLayout(request.size, forceSize);
    const bytes = sectors * SECTOR;
    const footer = buildFooter(bytes, geometry, fixed, forceSize);
    if (fixed) {
      await file.truncate(bytes + FOOTER_BYTES, true);
      await file.write(bytes, FOOTER_BYTES, footer);
      return;
    }
    const metadata = dynamicMetadata(footer, sectors);
    await file.write(0, metadata.length, metadata);
  },
};
