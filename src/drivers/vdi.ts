/**
 * `vdi`: VirtualBox's disk image. A 512-byte header, a block map (one little-endian entry per
 * 1 MiB block: its index among the data blocks, or unallocated) and the data blocks in the
 * order they were allocated. A new block is written whole (zeroes around the data), then the
 * header (its count of allocated blocks) and the changed block-map sectors, as QEMU 7.2 does.
 */
import { BlkioError, errno, toBlkioError } from '../errors.js';
import { ROLE_IMAGE, type BlockDriver, type CheckResult } from '../block/driver.js';
import type { BdrvChild } from '../block/child.js';
import { REQUEST_MAX_BYTES, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_RECURSE, STATUS_ZERO } from '../block/flags.js';
import { Mutex } from '../block/mutex.js';
import { fileAllocatedSize, view } from './format-helpers.js';
import { lazyBuiltin } from '../lazy-builtin.js';

const crypto = lazyBuiltin<typeof import('node:crypto')>('node:crypto');

const SECTOR_SIZE = 512;
const HEADER_SIZE = 512;
const SIGNATURE = 0xbeda107f;
const VERSION_1_1 = 0x00010001;
const TYPE_DYNAMIC = 1;
const TYPE_STATIC = 2;
const BLOCK_SIZE = 1024 * 1024;
/** Entries at or above this are no data block (0xffffffff never allocated, 0xfffffffe discarded). */
const FIRST_UNALLOCATED = 0xfffffffe;
const UNALLOCATED = 0xffffffff;
/** The block map is read in one request, so it can be no larger than one. */
const MAX_BLOCKS = REQUEST_MAX_BYTES / 4;
const MAX_DISK_SIZE = MAX_BLOCKS * BLOCK_SIZE;
const ENTRIES_PER_SECTOR = SECTOR_SIZE / 4;
/** What QEMU writes into the text field of the images it creates. */
const IMAGE_TEXT = '<<< QEMU VM Virtual Disk Image >>>\n';

/** Header fields by byte offset (all little endian). */
const H = {
  signature: 0x40, version: 0x44, headerSize: 0x48, imageType: 0x4c, offsetBmap: 0x154, offsetData: 0x158,
  sectorSize: 0x168, diskSize: 0x170, blockSize: 0x178, blocksInImage: 0x180, blocksAllocated: 0x184,
  uuidImage: 0x188, uuidLastSnap: 0x198, uuidLink: 0x1a8, uuidParent: 0x1b8,
} as const;

interface VdiState {
  file: BdrvChild;
  /** The header as read; allocation updates its disk size (rounded) and block count before writing it back. */
  header: Uint8Array;
  headerView: DataView;
  imageType: number;
  diskSize: number;
  offsetData: number;
  offsetBmap: number;
  blocksInImage: number;
  bmap: Uint8Array;
  bmapView: DataView;
  /** Held while blocks are allocated, so two writes never take the same one. */
  allocation: Mutex;
}

function hex(n: number | bigint): string {
  return n.toString(16);
}

function unsupported(what: string): BlkioError {
  return new BlkioError('ENOTSUP', `unsupported VDI image (${what})`);
}

function isNullUuid(header: Uint8Array, offset: number): boolean {
  return header.subarray(offset, offset + 16).every((b) => b === 0);
}

/** Refuse what QEMU refuses, in its order; returns the disk size rounded up to whole sectors. */
function validateHeader(header: Uint8Array): number {
  const v = view(header);
  const diskSize = v.getBigUint64(H.diskSize, true);
  if (diskSize > BigInt(MAX_DISK_SIZE)) {
    throw new BlkioError('ENOTSUP', `Unsupported VDI image size (size is 0x${hex(diskSize)}, max supported is 0x${hex(MAX_DISK_SIZE)})`);
  }
  const size = Math.ceil(Number(diskSize) / SECTOR_SIZE) * SECTOR_SIZE;
  const signature = v.getUint32(H.signature, true);
  const version = v.getUint32(H.version, true);
  const offsetBmap = v.getUint32(H.offsetBmap, true);
  const offsetData = v.getUint32(H.offsetData, true);
  const sectorSize = v.getUint32(H.sectorSize, true);
  const blockSize = v.getUint32(H.blockSize, true);
  const blocks = v.getUint32(H.blocksInImage, true);
  if (signature !== SIGNATURE) {
    throw new BlkioError('EINVAL', `Image not in VDI format (bad signature ${hex(signature).padStart(8, '0')})`);
  }
  if (version !== VERSION_1_1) throw unsupported(`version ${version >>> 16}.${version & 0xffff}`);
  if (offsetBmap % SECTOR_SIZE) throw unsupported(`unaligned block map offset 0x${hex(offsetBmap)}`);
  if (offsetData % SECTOR_SIZE) throw unsupported(`unaligned data offset 0x${hex(offsetData)}`);
  if (sectorSize !== SECTOR_SIZE) throw unsupported(`sector size ${sectorSize} is not ${SECTOR_SIZE}`);
  if (blockSize !== BLOCK_SIZE) throw unsupported(`block size ${blockSize} is not ${BLOCK_SIZE}`);
  if (size > blocks * blockSize) throw unsupported(`disk size ${size}, image bitmap has room for ${blocks * blockSize}`);
  if (!isNullUuid(header, H.uuidLink)) throw unsupported('non-NULL link UUID');
  if (!isNullUuid(header, H.uuidParent)) throw unsupported('non-NULL parent UUID');
  if (blocks > MAX_BLOCKS) throw unsupported(`too many blocks ${blocks}, max is ${MAX_BLOCKS}`);
  return size;
}

/** Bytes of a block map with room for `blocks` entries, in whole sectors. */
function bmapBytes(blocks: number): number {
  return Math.ceil((blocks * 4) / SECTOR_SIZE) * SECTOR_SIZE;
}

function entry(s: VdiState, block: number): number {
  return s.bmapView.getUint32(block * 4, true);
}

function dataOffset(s: VdiState, blockEntry: number): number {
  return s.offsetData + blockEntry * BLOCK_SIZE;
}

/** Calls `each` for the pieces of [offset, offset+bytes) that lie in one block each. */
async function forEachBlock(
  offset: number, bytes: number, each: (block: number, inBlock: number, n: number, done: number) => Promise<void>,
): Promise<void> {
  for (let done = 0; done < bytes;) {
    const inBlock = (offset + done) % BLOCK_SIZE;
    const n = Math.min(bytes - done, BLOCK_SIZE - inBlock);
    await each(Math.floor((offset + done) / BLOCK_SIZE), inBlock, n, done);
    done += n;
  }
}

/**
 * Allocate the unallocated blocks the write touches, writing each whole, then the header and
 * the block-map sectors from the first to the last block allocated.
 */
async function allocatingWrite(s: VdiState, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  let first = -1;
  let last = -1;
  let block: Uint8Array | undefined;
  await forEachBlock(offset, bytes, async (index, inBlock, n, done) => {
    let e = entry(s, index);
    if (e < FIRST_UNALLOCATED) {
      await s.file.write(dataOffset(s, e) + inBlock, n, buf.subarray(done, done + n));
      return;
    }
    e = s.headerView.getUint32(H.blocksAllocated, true);
    s.bmapView.setUint32(index * 4, e, true);
    s.headerView.setUint32(H.blocksAllocated, e + 1, true);
    if (first < 0) first = index;
    last = index;
    block ??= new Uint8Array(BLOCK_SIZE);
    block.fill(0);
    block.set(buf.subarray(done, done + n), inBlock);
    await s.file.write(dataOffset(s, e), BLOCK_SIZE, block);
  });
  if (first < 0) return;
  s.headerView.setBigUint64(H.diskSize, BigInt(s.diskSize), true);
  await s.file.write(0, HEADER_SIZE, s.header);
  const firstSector = Math.floor(first / ENTRIES_PER_SECTOR);
  const sectors = Math.floor(last / ENTRIES_PER_SECTOR) - firstSector + 1;
  const start = firstSector * SECTOR_SIZE;
  await s.file.write(s.offsetBmap + start, sectors * SECTOR_SIZE, s.bmap.subarray(start, start + sectors * SECTOR_SIZE));
}

/** qemu-img check: block map entries in range, used once, and counted in the header. */
function checkBlockMap(s: VdiState, report: (line: string) => void): number {
  let corruptions = 0;
  let allocated = 0;
  const used = new Uint8Array(s.blocksInImage);
  for (let block = 0; block < s.blocksInImage; block++) {
    const e = entry(s, block);
    if (e >= FIRST_UNALLOCATED) continue;
    if (e >= s.blocksInImage) {
      report(`ERROR: block index ${block} too large, is ${e}`);
      corruptions++;
      continue;
    }
    allocated++;
    if (used[e]) {
      // QEMU names the shared data block twice here.
      report(`ERROR: block index ${e} also used by ${e}`);
      corruptions++;
    }
    used[e] = 1;
  }
  const counted = s.headerView.getUint32(H.blocksAllocated, true);
  if (allocated !== counted) {
    report(`ERROR: allocated blocks mismatch, is ${allocated}, should be ${counted}`);
    corruptions++;
  }
  return corruptions;
}

function newHeader(size: number, imageType: number, blocks: number): Uint8Array {
  const header = new Uint8Array(HEADER_SIZE);
  const v = view(header);
  header.set(new TextEncoder().encode(IMAGE_TEXT));
  v.setUint32(H.signature, SIGNATURE, true);
  v.setUint32(H.version, VERSION_1_1, true);
  v.setUint32(H.headerSize, 0x180, true);
  v.setUint32(H.imageType, imageType, true);
  v.setUint32(H.offsetBmap, HEADER_SIZE, true);
  v.setUint32(H.offsetData, HEADER_SIZE + bmapBytes(blocks), true);
  v.setUint32(H.sectorSize, SECTOR_SIZE, true);
  v.setBigUint64(H.diskSize, BigInt(size), true);
  v.setUint32(H.blockSize, BLOCK_SIZE, true);
  v.setUint32(H.blocksInImage, blocks, true);
  if (imageType === TYPE_STATIC) v.setUint32(H.blocksAllocated, blocks, true);
  header.set(randomUuid(), H.uuidImage);
  header.set(randomUuid(), H.uuidLastSnap);
  return header;
}

/** A version 4 UUID, as VirtualBox stores it (the first three fields little endian). */
function randomUuid(): Uint8Array {
  const u = crypto().randomBytes(16);
  u[6] = (u[6]! & 0x0f) | 0x40;
  u[8] = (u[8]! & 0x3f) | 0x80;
  u.subarray(0, 4).reverse();
  u.subarray(4, 6).reverse();
  u.subarray(6, 8).reverse();
  return u;
}

export const vdiDriver: BlockDriver<VdiState> = {
  name: 'vdi',
  kind: 'format',
  options: {},

  probe: (header) => (header.length >= HEADER_SIZE && view(header).getUint32(H.signature, true) === SIGNATURE ? 100 : 0),

  async open(_node, ctx) {
    const file = (await ctx.openChild('file', ROLE_IMAGE))!;
    const header = new Uint8Array(HEADER_SIZE);
    await file.read(0, HEADER_SIZE, header);
    const diskSize = validateHeader(header);
    const headerView = view(header);
    const blocksInImage = headerView.getUint32(H.blocksInImage, true);
    const offsetBmap = headerView.getUint32(H.offsetBmap, true);
    const bmap = new Uint8Array(bmapBytes(blocksInImage));
    await file.read(offsetBmap, bmap.length, bmap);
    return {
      file, header, headerView, imageType: headerView.getUint32(H.imageType, true), diskSize,
      offsetData: headerView.getUint32(H.offsetData, true), offsetBmap, blocksInImage,
      bmap, bmapView: view(bmap), allocation: new Mutex(),
    };
  },

  async reopen() {},

  getLength: (node) => node.state.diskSize,

  allocatedSize: (node) => fileAllocatedSize(node.state.file),

  async read(node, offset, bytes, buf) {
    const s = node.state;
    await forEachBlock(offset, bytes, async (index, inBlock, n, done) => {
      const e = entry(s, index);
      if (e >= FIRST_UNALLOCATED) buf.fill(0, done, done + n);
      else await s.file.read(dataOffset(s, e) + inBlock, n, buf.subarray(done, done + n));
    });
  },

  async write(node, offset, bytes, buf) {
    const s = node.state;
    await s.allocation.run(() => allocatingWrite(s, offset, bytes, buf));
  },

  async blockStatus(node, offset, bytes) {
    const s = node.state;
    const inBlock = offset % BLOCK_SIZE;
    const pnum = Math.min(BLOCK_SIZE - inBlock, bytes);
    const e = entry(s, Math.floor(offset / BLOCK_SIZE));
    if (e >= FIRST_UNALLOCATED) return { status: STATUS_ZERO, pnum };
    // A static image's blocks may be holes in the file never written.
    const recurse = s.imageType === TYPE_STATIC ? STATUS_RECURSE : 0;
    return { status: STATUS_DATA | STATUS_OFFSET_VALID | recurse, pnum, map: dataOffset(s, e) + inBlock, file: s.file.node };
  },

  getInfo: () => ({ clusterSize: BLOCK_SIZE, vmStateOffset: 0 }),

  async check(node, repair, report): Promise<CheckResult> {
    if (repair) throw errno('ENOTSUP');
    return {
      corruptions: checkBlockMap(node.state, report), leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0,
      totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0,
    };
  },

  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'static', type: 'bool', default: false, help: 'VDI static (pre-allocated) image' },
  ],

  async create(file, request) {
    const size = request.size;
    if (size > MAX_DISK_SIZE) {
      throw new BlkioError('ENOTSUP', `Unsupported VDI image size (size is 0x${hex(size)}, max supported is 0x${hex(MAX_DISK_SIZE)})`);
    }
    const imageType = request.options.static === true ? TYPE_STATIC : TYPE_DYNAMIC;
    const blocks = Math.ceil(size / BLOCK_SIZE);
    await file.write(0, HEADER_SIZE, newHeader(size, imageType, blocks));
    const bmap = new Uint8Array(bmapBytes(blocks));
    const bmapView = view(bmap);
    for (let i = 0; i < blocks; i++) bmapView.setUint32(i * 4, imageType === TYPE_STATIC ? i : UNALLOCATED, true);
    if (bmap.length) await file.write(HEADER_SIZE, bmap.length, bmap);
    if (imageType === TYPE_STATIC) {
      await file.truncate(HEADER_SIZE + bmap.length + blocks * BLOCK_SIZE, false).catch((e: unknown) => {
        throw toBlkioError(e).prepend('Failed to statically allocate file');
      });
    }
  },
};

