/**
 * `vhdx`: Hyper-V's disk image (QEMU's block/vhdx.c). The first MiB holds a file identifier,
 * two headers (the valid one with the higher sequence number is current) and the region
 * table, which places the BAT and the metadata region; the metadata gives the block size, the
 * disk size and the sector sizes. Each BAT entry holds a payload block's state and its place in
 * the file (whole MiB). A new block goes at the file's end, and its BAT entry is written
 * through the log (log.ts). Differencing images are refused, as by QEMU 7.2. Creation is
 * create.ts.
 */
import { BlkioError, errno, toBlkioError } from '../../errors.js';
import { ROLE_IMAGE, type BlockDriver, type CheckResult } from '../../block/driver.js';
import type { BdrvChild } from '../../block/child.js';
import { REQ_ZERO_WRITE } from '../../block/flags.js';
import { limitsFrom } from '../../block/node.js';
import type { BlockNode } from '../../block/node.js';
import { Mutex } from '../../block/mutex.js';
import { refreshPermissions } from '../../block/permissions.js';
import { fileAllocatedSize, openFailure, readBytes, view } from '../format-helpers.js';
import {
  batEntryCount, batIndexOf, BLOCK_FULLY_PRESENT, BLOCK_NOT_PRESENT, BLOCK_SIZE_MAX, BLOCK_SIZE_MIN, BLOCK_STATE_MASK,
  BLOCK_UNDEFINED, BLOCK_UNMAPPED, BLOCK_UNMAPPED_V095, BLOCK_ZERO, chunkRatioOf, FILE_SIGNATURE, GUID, H, HEADER1_OFFSET,
  HEADER2_OFFSET, HEADER_BLOCK_BYTES, HEADER_BYTES, HEADER_SIGNATURE, hasValidChecksum, METADATA_IS_REQUIRED,
  METADATA_SIGNATURE, METADATA_TABLE_MAX_BYTES, metadataEntryAt, MiB, newGuid, PARAMS_HAS_PARENT, REGION_ENTRY_REQUIRED,
  REGION_SIGNATURE, REGION_TABLE_OFFSET, regionEntryAt, SECTOR, TABLE_BYTES, u64, type TableEntry,
} from './format.js';
import { logWriteAndFlush, openLog } from './log.js';
import { userVisibleWrite, type VhdxState } from './state.js';
import { createVhdx, VHDX_CREATE_OPTIONS } from './create.js';

const INT64_MAX = (1n << 63n) - 1n;

function invalid(): BlkioError {
  return new BlkioError('EINVAL');
}

function overlapMessage(start: number, end: number, r: { start: number; end: number }): string {
  // QEMU's format prints the other region's end with "%." PRIu64: a zero end prints as nothing.
  return `VHDX region ${start}-${end} overlaps with region ${r.start}-${r.end === 0 ? '' : r.end}`;
}

/** Whether [start, start+length) overlaps a region already known; QEMU reports the first found. */
function overlappingRegion(s: VhdxState, start: number, length: number, report: (line: string) => void): boolean {
  const end = start + length;
  const r = s.regions.find((region) => !(start >= region.end || end <= region.start));
  if (r) report(overlapMessage(start, end, r));
  return r !== undefined;
}

function registerRegion(s: VhdxState, start: number, length: number): void {
  s.regions.unshift({ start, end: start + length });
}

/** The two headers; the current one is the valid one with the higher sequence number. */
async function readHeaders(file: BdrvChild): Promise<{ headers: [Uint8Array, Uint8Array]; current: 0 | 1 }> {
  const noHeader = (e?: unknown): BlkioError =>
    new BlkioError('EINVAL', e === undefined ? 'No valid VHDX header found' : `No valid VHDX header found: ${toBlkioError(e).strerror}`);
  const blocks: Uint8Array[] = [];
  for (const offset of [HEADER1_OFFSET, HEADER2_OFFSET]) {
    blocks.push(await readBytes(file, offset, HEADER_BLOCK_BYTES).catch((e: unknown) => {
      throw noHeader(e);
    }));
  }
  const valid = blocks.map((b) => hasValidChecksum(b, H.checksum) && view(b).getUint32(H.signature, true) === HEADER_SIGNATURE &&
    view(b).getUint16(H.version, true) === 1);
  const headers: [Uint8Array, Uint8Array] = [blocks[0]!.slice(0, HEADER_BYTES), blocks[1]!.slice(0, HEADER_BYTES)];
  const sequence = (i: 0 | 1): bigint => view(headers[i]).getBigUint64(H.sequence, true);
  let current: 0 | 1;
  if (valid[0] && valid[1]) {
    if (sequence(0) !== sequence(1)) current = sequence(0) > sequence(1) ? 0 : 1;
    // Identical headers (as Disk2VHD writes them) are fine; different ones with one number are not.
    else if (headers[0].every((b, i) => b === headers[1][i])) current = 0;
    else throw noHeader();
  } else if (valid[0] || valid[1]) {
    current = valid[0] ? 0 : 1;
  } else {
    throw noHeader();
  }
  return { headers, current };
}

/** The region table's BAT and metadata entries, checked as QEMU does. */
async function readRegionTable(s: VhdxState, report: (line: string) => void): Promise<{ bat: TableEntry; metadata: TableEntry }> {
  const table = await readBytes(s.file, REGION_TABLE_OFFSET, TABLE_BYTES);
  if (!hasValidChecksum(table, 4) || view(table).getUint32(0, true) !== REGION_SIGNATURE) throw invalid();
  const count = view(table).getUint32(8, true);
  if (count > 2047) throw invalid();
  let bat: TableEntry | undefined;
  let metadata: TableEntry | undefined;
  for (let i = 0; i < count; i++) {
    const entry = regionEntryAt(table, i);
    if (overlappingRegion(s, entry.offset, entry.length, report)) throw invalid();
    registerRegion(s, entry.offset, entry.length);
    if (entry.guid === GUID.bat || entry.guid === GUID.metadata) {
      if ((entry.guid === GUID.bat ? bat : metadata) !== undefined) throw invalid();
      if (entry.guid === GUID.bat) bat = entry;
      else metadata = entry;
    } else if (entry.dataBits & REGION_ENTRY_REQUIRED) {
      throw errno('ENOTSUP');
    }
  }
  if (!bat || !metadata) throw invalid();
  return { bat, metadata };
}

const REQUIRED_METADATA = [GUID.fileParameters, GUID.virtualDiskSize, GUID.page83, GUID.logicalSectorSize, GUID.physicalSectorSize];

/** The metadata items the driver uses, checked in QEMU's order. */
async function readMetadata(s: VhdxState, region: TableEntry): Promise<void> {
  const table = await readBytes(s.file, region.offset, METADATA_TABLE_MAX_BYTES);
  if (new TextDecoder('latin1').decode(table.subarray(0, 8)) !== METADATA_SIGNATURE) throw invalid();
  const count = view(table).getUint16(10, true);
  if (count * 32 > METADATA_TABLE_MAX_BYTES - 32) throw invalid();
  const found = new Map<string, TableEntry>();
  for (let i = 0; i < count; i++) {
    const entry = metadataEntryAt(table, i);
    if (REQUIRED_METADATA.includes(entry.guid as never) || entry.guid === GUID.parentLocator) {
      if (found.has(entry.guid)) throw invalid();
      found.set(entry.guid, entry);
    } else if (entry.dataBits & METADATA_IS_REQUIRED) {
      throw errno('ENOTSUP');
    }
  }
  if (!REQUIRED_METADATA.every((guid) => found.has(guid))) throw errno('ENOTSUP');
  const item = (guid: string, bytes: number): Promise<DataView> =>
    readBytes(s.file, region.offset + found.get(guid)!.offset, bytes).then(view);
  const params = await item(GUID.fileParameters, 8);
  if (params.getUint32(4, true) & PARAMS_HAS_PARENT) throw errno(found.has(GUID.parentLocator) ? 'ENOTSUP' : 'EINVAL');
  const virtualDiskSize = u64(await item(GUID.virtualDiskSize, 8), 0);
  const logicalSectorSize = (await item(GUID.logicalSectorSize, 4)).getUint32(0, true);
  await item(GUID.physicalSectorSize, 4);
  const blockSize = params.getUint32(0, true);
  if (blockSize < BLOCK_SIZE_MIN || blockSize > BLOCK_SIZE_MAX) throw invalid();
  // QEMU 7.2 reads 512-byte logical sectors only.
  if (logicalSectorSize !== SECTOR) throw errno('ENOTSUP');
  // Block size, sectors per block and chunk ratio must all be powers of two.
  if ((blockSize & (blockSize - 1)) !== 0) throw invalid();
  s.blockSize = blockSize;
  s.chunkRatio = chunkRatioOf(blockSize);
  s.length = Math.floor(virtualDiskSize / SECTOR) * SECTOR;
  s.batEntries = batEntryCount({ blockSize, chunkRatio: s.chunkRatio, virtualDiskSize });
}

function batEntry(s: VhdxState, index: number): { state: number; offset: bigint } {
  const raw = s.batView.getBigUint64(index * 8, true);
  return { state: Number(raw & BigInt(BLOCK_STATE_MASK)), offset: raw & ~0xfffffn };
}

/**
 * Fully present blocks must lie in the file and outside the log and the metadata (QEMU's
 * check at open, which stops at the first fault, and of qemu-img check, which counts them).
 */
function checkBatEntries(s: VhdxState, report: (line: string) => void, stopAtFirst: boolean): number {
  const fileSize = BigInt(s.file.getLength());
  let faults = 0;
  let payloadBlocks = s.chunkRatio;
  for (let i = 0; i < s.batEntries; i++) {
    const { state, offset } = batEntry(s, i);
    if (state !== BLOCK_FULLY_PRESENT) continue;
    // QEMU's unsigned 32-bit length: an entry past the disk's end wraps to a huge one.
    const blockLength = BigInt.asUintN(32, BigInt(Math.min(s.blockSize, s.length - i * s.blockSize)));
    const fault = (message?: string): boolean => {
      if (message) report(message);
      faults++;
      return stopAtFirst;
    };
    if (offset > INT64_MAX - BigInt(s.blockSize) && fault(`VHDX BAT entry ${i} offset overflow.`)) break;
    const pastEnd = (which: string, at: bigint): string =>
      `VHDX BAT entry ${i} ${which} offset ${at} points after end of file (${fileSize}). Image has probably been truncated.`;
    if (offset >= fileSize) {
      if (fault(pastEnd('start', offset))) break;
    } else if (offset + blockLength > fileSize) {
      if (fault(pastEnd('end', offset + blockLength - 1n))) break;
    }
    // QEMU counts present entries, not indices, to skip what it takes for sector bitmap entries.
    if (payloadBlocks-- > 0) {
      if (overlappingRegion(s, Number(offset), s.blockSize, report) && fault()) break;
    } else {
      payloadBlocks = s.chunkRatio;
    }
  }
  return faults;
}

async function openVhdx(node: BlockNode<VhdxState>, file: BdrvChild): Promise<VhdxState> {
  const report = (line: string): void => node.layer.warn(line);
  const signature = await readBytes(file, 0, 8);
  if (new TextDecoder('latin1').decode(signature) !== FILE_SIGNATURE) throw invalid();
  const { headers, current } = await readHeaders(file);
  const s: VhdxState = {
    file, headers, current, sessionGuid: newGuid(), firstVisibleWrite: true, logReplayedOnOpen: false,
    log: { offset: 0, length: 0, read: 0, write: 0, sequence: 0n, tail: 0 },
    blockSize: 0, chunkRatio: 0, length: 0, batOffset: 0, batEntries: 0,
    bat: new Uint8Array(0), batView: new DataView(new ArrayBuffer(0)), regions: [], lock: new Mutex(),
  };
  const h = view(headers[current]);
  registerRegion(s, u64(h, H.logOffset), h.getUint32(H.logLength, true));
  // A log replay writes during the open: the file edge takes its permissions now, as QEMU's attach does.
  if (!node.readOnly) refreshPermissions(new Map(), [node]);
  s.logReplayedOnOpen = await openLog(s, node.readOnly, file.node.filename);
  const regions = await readRegionTable(s, report);
  await readMetadata(s, regions.metadata);
  s.batOffset = regions.bat.offset;
  if (s.batEntries > regions.bat.length / 8) throw invalid();
  s.bat = await readBytes(file, s.batOffset, regions.bat.length);
  s.batView = view(s.bat);
  if (!node.layer.openForCheck && checkBatEntries(s, report, true) > 0) throw invalid();
  return s;
}

/** Where guest `offset` lies: its BAT entry, and the bytes of the request up to the block's end. */
interface BlockPlace {
  /** The BAT entry's index and its block state. */
  index: number;
  state: number;
  /** Where `offset` is in the file (0 where the entry gives none), and in its block. */
  fileOffset: number;
  inBlock: number;
  /** Bytes from `offset` to the block's end or the request's. */
  avail: number;
}

function translate(s: VhdxState, offset: number, bytes: number): BlockPlace {
  const block = Math.floor(offset / s.blockSize);
  const inBlock = offset - block * s.blockSize;
  const index = batIndexOf(block, s.chunkRatio);
  const { state, offset: base } = batEntry(s, index);
  const avail = Math.min(s.blockSize - inBlock, bytes);
  // A zero offset (a block in no place) is used as it is, without the offset in the block.
  return { index, state, fileOffset: base === 0n ? 0 : Number(base) + inBlock, inBlock, avail };
}

/** New space for a block at the file's end (whole MiB); `zeroed`: it reads as zeroes, by the truncation or as not asked for. */
async function allocateBlock(s: VhdxState, needZero: boolean): Promise<{ offset: number; zeroed: boolean }> {
  const offset = Math.ceil(s.file.getLength() / MiB) * MiB;
  if (needZero) {
    try {
      await s.file.truncate(offset + s.blockSize, false, 'off', REQ_ZERO_WRITE);
      return { offset, zeroed: true };
    } catch (e) {
      if (toBlkioError(e).code !== 'ENOTSUP') throw e;
    }
  }
  await s.file.truncate(offset + s.blockSize, false);
  return { offset, zeroed: !needZero };
}

function setBatEntry(s: VhdxState, index: number, value: bigint): Uint8Array {
  s.batView.setBigUint64(index * 8, value, true);
  return s.bat.slice(index * 8, index * 8 + 8);
}

async function writeLocked(s: VhdxState, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  await userVisibleWrite(s);
  for (let done = 0; done < bytes;) {
    const t = translate(s, offset + done, bytes - done);
    const data = buf.subarray(done, done + t.avail);
    let target = t.fileOffset;
    let payload = data;
    let newEntry: Uint8Array | undefined;
    const previous = s.batView.getBigUint64(t.index * 8, true);
    switch (t.state) {
      case BLOCK_ZERO:
      case BLOCK_NOT_PRESENT:
      case BLOCK_UNMAPPED:
      case BLOCK_UNMAPPED_V095:
      case BLOCK_UNDEFINED: {
        const needZero = t.state === BLOCK_ZERO;
        const { offset: blockOffset, zeroed } = await allocateBlock(s, needZero);
        newEntry = setBatEntry(s, t.index, BigInt(blockOffset) + BigInt(BLOCK_FULLY_PRESENT));
        target = blockOffset + t.inBlock;
        if (!zeroed) {
          // The rest of a zero block must read as zeroes, and the truncation could not promise it.
          payload = new Uint8Array(s.blockSize);
          payload.set(data, t.inBlock);
          target = blockOffset;
        }
        break;
      }
      case BLOCK_FULLY_PRESENT:
        break;
      default:
        throw errno('EIO');
    }
    try {
      if (target < MiB) throw errno('EFAULT');
      await s.file.write(target, payload.length, payload);
    } catch (e) {
      if (newEntry) setBatEntry(s, t.index, previous);
      throw e;
    }
    if (newEntry) await logWriteAndFlush(s, newEntry, s.batOffset + t.index * 8);
    done += t.avail;
  }
}

export const vhdxDriver: BlockDriver<VhdxState> = {
  name: 'vhdx',
  kind: 'format',
  options: {},

  probe: (header) => (header.length >= 8 && new TextDecoder('latin1').decode(header.subarray(0, 8)) === FILE_SIGNATURE ? 100 : 0),

  async open(node, ctx) {
    const file = (await ctx.openChild('file', ROLE_IMAGE))!;
    try {
      return await openVhdx(node, file);
    } catch (e) {
      throw openFailure(file, e);
    }
  },

  async reopen() {},

  refreshLimits(node) {
    node.limits = { ...limitsFrom(node.state.file.node), requestAlignment: SECTOR };
  },

  getLength: (node) => node.state.length,

  allocatedSize: (node) => fileAllocatedSize(node.state.file),

  async read(node, offset, bytes, buf) {
    const s = node.state;
    for (let done = 0; done < bytes;) {
      const t = translate(s, offset + done, bytes - done);
      const piece = buf.subarray(done, done + t.avail);
      switch (t.state) {
        case BLOCK_NOT_PRESENT:
        case BLOCK_UNDEFINED:
        case BLOCK_UNMAPPED:
        case BLOCK_UNMAPPED_V095:
        case BLOCK_ZERO:
          piece.fill(0);
          break;
        case BLOCK_FULLY_PRESENT:
          await s.file.read(t.fileOffset, t.avail, piece);
          break;
        default:
          throw errno('EIO');
      }
      done += t.avail;
    }
  },

  async write(node, offset, bytes, buf) {
    const s = node.state;
    await s.lock.run(() => writeLocked(s, offset, bytes, buf));
  },

  getInfo: (node) => ({ clusterSize: node.state.blockSize, vmStateOffset: 0 }),

  /**
   * Nothing to repair: a dirty log was replayed by the read-write open, which counts as one fixed
   * corruption. The BAT faults go out as QEMU's error_report lines (with the program name).
   */
  async check(node): Promise<CheckResult> {
    const s = node.state;
    const corruptions = checkBatEntries(s, (line) => node.layer.warn(line), false);
    return {
      corruptions, leaks: 0, checkErrors: 0, corruptionsFixed: s.logReplayedOnOpen ? 1 : 0, leaksFixed: 0,
      totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0,
    };
  },

  createOptions: VHDX_CREATE_OPTIONS,

  create: createVhdx,
};
