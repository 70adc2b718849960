/**
 * `qemu-img create -f vhdx`: the layout QEMU 7.2 makes. The file identifier, two headers (the
 * second current), two copies of the region table, the log (1 MiB in), the BAT after it, the
 * metadata region after that, and payload blocks from 5 MiB past the BAT. The checks and the
 * order of the writes are QEMU's.
 */
import { BlkioError } from '../../errors.js';
import type { BdrvChild } from '../../block/child.js';
import type { CreateOptionSpec, CreateRequest } from '../../block/driver.js';
import { roundUp } from '../../arithmetic.js';
import { view } from '../format-helpers.js';
import {
  batEntryCount, batIndexOf, BLOCK_FULLY_PRESENT, BLOCK_NOT_PRESENT, BLOCK_SIZE_MAX, BLOCK_ZERO, chunkRatioOf, FILE_SIGNATURE,
  GUID, guidBytes, H, HEADER1_OFFSET, HEADER2_OFFSET, HEADER_BLOCK_BYTES, HEADER_BYTES, HEADER_SECTION_END, HEADER_SIGNATURE,
  METADATA_IS_REQUIRED, METADATA_IS_VIRTUAL_DISK, METADATA_SIGNATURE, MiB, newGuid, PARAMS_LEAVE_BLOCKS_ALLOCATED,
  REGION_SIGNATURE, REGION_TABLE2_OFFSET, REGION_TABLE_OFFSET, SECTOR, setChecksum, TABLE_BYTES, type Geometry,
} from './format.js';

const DEFAULT_LOG_SIZE = MiB;
const MAX_IMAGE_SIZE = 64 * 1024 * 1024 * MiB;
/** QEMU names itself and its version in the file identifier (diagnostic only); blkio writes what qemu-img 7.2 writes. */
const CREATOR = 'QEMU v7.2.22';

export const VHDX_CREATE_OPTIONS: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size; max of 64TB.' },
  { name: 'log_size', type: 'size', default: DEFAULT_LOG_SIZE, help: 'Log size; min 1MB.' },
  {
    name: 'block_size', type: 'size', default: 0,
    help: 'Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.',
  },
  { name: 'subformat', type: 'string', help: "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'." },
  {
    name: 'block_state_zero', type: 'bool',
    help: "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic.",
  },
];

interface VhdxCreateSettings {
  size: number;
  logSize: number;
  blockSize: number;
  fixed: boolean;
  zeroBlocks: boolean;
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** The options as QEMU rounds and checks them (sizes rounded up to 512 bytes and to MiB). */
function createSettings(request: CreateRequest): VhdxCreateSettings {
  const o = request.options;
  const subformat = o.subformat ?? 'dynamic';
  if (subformat !== 'dynamic' && subformat !== 'fixed') throw invalid(`Parameter 'subformat' does not accept value '${String(subformat)}'`);
  const size = roundUp(request.size, SECTOR);
  if (size > MAX_IMAGE_SIZE) throw invalid('Image size too large; max of 64TB');
  const logSize = o.log_size === undefined ? DEFAULT_LOG_SIZE : roundUp(o.log_size as number, MiB);
  if (logSize > 0xffffffff) throw invalid('Log size must be smaller than 4 GB');
  if (logSize < MiB) throw invalid('Log size must be a multiple of 1 MB');
  let blockSize = Math.min(roundUp((o.block_size as number | undefined) ?? 0, MiB), BLOCK_SIZE_MAX);
  if (blockSize === 0) {
    // QEMU's choice, to keep the BAT small enough to hold in memory.
    if (size > 32 * 1024 * 1024 * MiB) blockSize = 64 * MiB;
    else if (size > 100 * 1024 * MiB) blockSize = 32 * MiB;
    else if (size > 1024 * MiB) blockSize = 16 * MiB;
    else blockSize = 8 * MiB;
  }
  if ((blockSize & (blockSize - 1)) !== 0) throw invalid('Block size must be a power of two');
  return { size, logSize, blockSize, fixed: subformat === 'fixed', zeroBlocks: o.block_state_zero !== false };
}

function newHeader(sequence: bigint, logSize: number, fileWriteGuid: Uint8Array, dataWriteGuid: Uint8Array): Uint8Array {
  const block = new Uint8Array(HEADER_BLOCK_BYTES);
  const v = view(block);
  v.setUint32(H.signature, HEADER_SIGNATURE, true);
  v.setBigUint64(H.sequence, sequence, true);
  block.set(fileWriteGuid, H.fileWriteGuid);
  block.set(dataWriteGuid, H.dataWriteGuid);
  v.setUint16(H.version, 1, true);
  v.setUint32(H.logLength, logSize, true);
  v.setBigUint64(H.logOffset, BigInt(HEADER_SECTION_END), true);
  setChecksum(block, H.checksum);
  return block.subarray(0, HEADER_BYTES);
}

function regionTable(batOffset: number, batLength: number, metadataOffset: number): Uint8Array {
  const table = new Uint8Array(TABLE_BYTES);
  const v = view(table);
  v.setUint32(0, REGION_SIGNATURE, true);
  v.setUint32(8, 2, true);
  const entries: Array<[string, number, number]> = [[GUID.bat, batOffset, batLength], [GUID.metadata, metadataOffset, MiB]];
  entries.forEach(([guid, offset, length], i) => {
    const at = 16 + i * 32;
    table.set(guidBytes(guid), at);
    v.setBigUint64(at + 16, BigInt(offset), true);
    v.setUint32(at + 24, length, true);
  });
  setChecksum(table, 4);
  return table;
}

/** The metadata table (its first 64 KiB) and the five items that follow it. */
function metadata(settings: VhdxCreateSettings): { table: Uint8Array; items: Uint8Array } {
  const items = new Uint8Array(40);
  const iv = view(items);
  iv.setUint32(0, settings.blockSize, true);
  if (settings.fixed) iv.setUint32(4, PARAMS_LEAVE_BLOCKS_ALLOCATED, true);
  iv.setBigUint64(8, BigInt(settings.size), true);
  items.set(newGuid(), 16);
  iv.setUint32(32, SECTOR, true);
  iv.setUint32(36, SECTOR, true);
  const table = new Uint8Array(TABLE_BYTES);
  const tv = view(table);
  table.set(new TextEncoder().encode(METADATA_SIGNATURE));
  tv.setUint16(10, 5, true);
  const virtualDisk = METADATA_IS_REQUIRED | METADATA_IS_VIRTUAL_DISK;
  const entries: Array<[string, number, number, number]> = [
    [GUID.fileParameters, 0, 8, METADATA_IS_REQUIRED], [GUID.virtualDiskSize, 8, 8, virtualDisk],
    [GUID.page83, 16, 16, virtualDisk], [GUID.logicalSectorSize, 32, 4, virtualDisk], [GUID.physicalSectorSize, 36, 4, virtualDisk],
  ];
  entries.forEach(([guid, offset, length, bits], i) => {
    const at = 32 + i * 32;
    table.set(guidBytes(guid), at);
    tv.setUint32(at + 16, TABLE_BYTES + offset, true);
    tv.setUint32(at + 20, length, true);
    tv.setUint32(at + 24, bits, true);
  });
  return { table, items };
}

/** The BAT of a new image: every payload block zero, not present, or (fixed) at its place in the file. */
function newBat(g: Geometry, length: number, state: number, dataOffset: number): Uint8Array {
  const bat = new Uint8Array(length);
  const v = view(bat);
  for (let block = 0; block * g.blockSize < g.virtualDiskSize; block++) {
    const entry = state === BLOCK_FULLY_PRESENT ? BigInt(roundUp(dataOffset + block * g.blockSize, MiB) + state) : BigInt(state);
    v.setBigUint64(batIndexOf(block, g.chunkRatio) * 8, entry, true);
  }
  return bat;
}

export async function createVhdx(file: BdrvChild, request: CreateRequest): Promise<void> {
  const settings = createSettings(request);
  const signature = new TextEncoder().encode(FILE_SIGNATURE);
  await file.write(0, signature.length, signature);
  const creator = new Uint8Array(CREATOR.length * 2);
  for (let i = 0; i < CREATOR.length; i++) view(creator).setUint16(i * 2, CREATOR.charCodeAt(i), true);
  await file.write(signature.length, creator.length, creator);

  const sequence = BigInt(globalThis.crypto.getRandomValues(new Uint32Array(1))[0]!);
  const fileWriteGuid = newGuid();
  const dataWriteGuid = newGuid();
  await file.write(HEADER1_OFFSET, HEADER_BYTES, newHeader(sequence, settings.logSize, fileWriteGuid, dataWriteGuid));
  await file.write(HEADER2_OFFSET, HEADER_BYTES, newHeader(sequence + 1n, settings.logSize, fileWriteGuid, dataWriteGuid));

  const g: Geometry = { blockSize: settings.blockSize, virtualDiskSize: settings.size, chunkRatio: chunkRatioOf(settings.blockSize) };
  const batLength = roundUp(batEntryCount(g) * 8, MiB);
  const batOffset = roundUp(HEADER_SECTION_END + settings.logSize, MiB);
  const metadataOffset = roundUp(batOffset + batLength, MiB);
  // Payload starts past the metadata, leaving 4 MiB for it to grow.
  const dataOffset = batOffset + batLength + 5 * MiB;
  await file.truncate(settings.fixed ? dataOffset + settings.size : dataOffset, false);
  // A dynamic image's all-zero BAT is what the new file already reads as.
  if (settings.fixed || settings.zeroBlocks) {
    const state = settings.zeroBlocks ? BLOCK_ZERO : settings.fixed ? BLOCK_FULLY_PRESENT : BLOCK_NOT_PRESENT;
    await file.write(batOffset, batLength, newBat(g, batLength, state, dataOffset));
  }
  const table = regionTable(batOffset, batLength, metadataOffset);
  await file.write(REGION_TABLE_OFFSET, TABLE_BYTES, table);
  await file.write(REGION_TABLE2_OFFSET, TABLE_BYTES, table);
  const { table: metadataTable, items } = metadata(settings);
  await file.write(metadataOffset, TABLE_BYTES, metadataTable);
  await file.write(metadataOffset + TABLE_BYTES, items.length, items);
}
