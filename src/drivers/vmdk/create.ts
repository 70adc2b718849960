/**
 * `qemu-img create -f vmdk`: the subformats QEMU 7.2 makes (monolithicSparse, monolithicFlat,
 * twoGbMaxExtentSparse/Flat in 2 GiB extents, streamOptimized), their sparse headers, grain
 * directories and tables laid out as QEMU lays them out, and the descriptor it writes.
 */
import { BlkioError } from '../../errors.js';
import type { BdrvChild } from '../../block/child.js';
import type { CreateOptionSpec, CreateRequest } from '../../block/driver.js';
import {
  COMPRESSION_DEFLATE, FLAG_COMPRESS, FLAG_MARKER, FLAG_NL_DETECT, FLAG_RGD, FLAG_ZERO_GRAIN, SECTOR, V4, VMDK4_MAGIC,
} from './extent.js';
import { dirname } from './descriptor.js';

const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'];
const ADAPTER_TYPES = ['ide', 'buslogic', 'lsilogic', 'legacyESX'];
const SPLIT_SIZE = 0x80000000;
const GRANULARITY = 128;
const GTES_PER_GT = 512;

/** In QEMU's order (the `Formatting` line's). */
export const VMDK_CREATE_OPTIONS: readonly CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'adapter_type', type: 'string', help: 'Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX' },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: "Must be 'vmdk' if present" },
  { name: 'compat6', type: 'bool', default: false, help: 'VMDK version 6 image' },
  { name: 'hwversion', type: 'string', default: 'undefined', help: 'VMDK hardware version' },
  { name: 'toolsversion', type: 'string', help: 'VMware guest tools version' },
  {
    name: 'subformat', type: 'string',
    help: 'VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} ',
  },
  { name: 'zeroed_grain', type: 'bool', help: 'Enable efficient zero writes using the zeroed-grain GTE feature' },
];

interface ExtentKind {
  flat: boolean;
  compress: boolean;
  zeroedGrain: boolean;
}

/** A sparse extent's header, both grain directories and their (empty) grain tables. */
async function initSparseExtent(file: BdrvChild, size: number, kind: ExtentKind): Promise<void> {
  const capacity = size / SECTOR;
  const grains = Math.ceil(capacity / GRANULARITY);
  const gtSectors = Math.ceil((GTES_PER_GT * 4) / SECTOR);
  const gtCount = Math.ceil(grains / GTES_PER_GT);
  const gdSectors = Math.ceil((gtCount * 4) / SECTOR);
  const descOffset = 1;
  const descSize = 20;
  const rgdOffset = descOffset + descSize;
  const gdOffset = rgdOffset + gdSectors + gtSectors * gtCount;
  const grainOffset = Math.ceil((gdOffset + gdSectors + gtSectors * gtCount) / GRANULARITY) * GRANULARITY;

  const header = new Uint8Array(V4.compressAlgorithm + 2);
  const v = new DataView(header.buffer);
  v.setUint32(0, VMDK4_MAGIC, false);
  v.setUint32(V4.version, kind.compress ? 3 : kind.zeroedGrain ? 2 : 1, true);
  v.setUint32(V4.flags, FLAG_RGD | FLAG_NL_DETECT | (kind.compress ? FLAG_COMPRESS | FLAG_MARKER : 0) | (kind.zeroedGrain ? FLAG_ZERO_GRAIN : 0), true);
  v.setBigUint64(V4.capacity, BigInt(capacity), true);
  v.setBigUint64(V4.granularity, BigInt(GRANULARITY), true);
  v.setBigUint64(V4.descOffset, BigInt(descOffset), true);
  v.setBigUint64(V4.descSize, BigInt(descSize), true);
  v.setUint32(V4.gtesPerGt, GTES_PER_GT, true);
  v.setBigUint64(V4.rgdOffset, BigInt(rgdOffset), true);
  v.setBigUint64(V4.gdOffset, BigInt(gdOffset), true);
  v.setBigUint64(V4.grainOffset, BigInt(grainOffset), true);
  header.set([0x0a, 0x20, 0x0d, 0x0a], V4.checkBytes);
  v.setUint16(V4.compressAlgorithm, kind.compress ? COMPRESSION_DEFLATE : 0, true);
  await file.write(0, header.length, header);
  await file.truncate(grainOffset * SECTOR, false);

  for (const dirSector of [rgdOffset, gdOffset]) {
    const dir = new Uint8Array(gdSectors * SECTOR);
    const dv = new DataView(dir.buffer);
    for (let i = 0; i < gtCount; i++) dv.setUint32(i * 4, dirSector + gdSectors + i * gtSectors, true);
    await file.write(dirSector * SECTOR, dir.length, dir);
  }
}

async function initExtent(file: BdrvChild, size: number, kind: ExtentKind): Promise<void> {
  if (kind.flat) await file.truncate(size, false);
  else await initSparseExtent(file, size, kind);
}

/** A path split as QEMU splits it: directory (with its slash), name up to its last dot, and the rest. */
function decompose(filename: string): { path: string; prefix: string; postfix: string } {
  const path = dirname(filename);
  const base = filename.slice(path.length);
  const dot = base.lastIndexOf('.');
  return dot < 0 ? { path, prefix: base, postfix: '' } : { path, prefix: base.slice(0, dot), postfix: base.slice(dot) };
}

function enumValue(value: string | undefined, allowed: string[], fallback: string): string {
  if (value === undefined) return fallback;
  if (!allowed.includes(value)) throw new BlkioError('EINVAL', `invalid parameter value: ${value}`);
  return value;
}

interface DescriptorFields {
  cid: number;
  createType: string;
  /** The backing file's CID and name, for an image with one. */
  parent?: { cid: number; filename: string };
  extentLines: string;
  hwVersion: string;
  size: number;
  adapterType: string;
  toolsVersion: string;
}

function descriptor(d: DescriptorFields): string {
  const heads = d.adapterType === 'ide' ? 16 : 255;
  const parentCid = (d.parent?.cid ?? 0xffffffff).toString(16);
  const parentLine = d.parent ? `parentFileNameHint="${d.parent.filename}"` : '';
  return '# Disk DescriptorFile\nversion=1\n' +
    `CID=${d.cid.toString(16)}\nparentCID=${parentCid}\ncreateType="${d.createType}"\n${parentLine}\n` +
    `# Extent description\n${d.extentLines}\n` +
    '# The Disk Data Base\n#DDB\n\n' +
    `ddb.virtualHWVersion = "${d.hwVersion}"\n` +
    `ddb.geometry.cylinders = "${Math.floor(d.size / (63 * heads * SECTOR))}"\n` +
    `ddb.geometry.heads = "${heads}"\nddb.geometry.sectors = "63"\n` +
    `ddb.adapterType = "${d.adapterType}"\nddb.toolsVersion = "${d.toolsVersion}"\n`;
}

interface VmdkCreateSettings {
  subformat: string;
  adapterType: string;
  hwVersion: string;
  toolsVersion: string;
  split: boolean;
  kind: ExtentKind;
}

/** The options checked in QEMU's order, all before any file is made. */
function createSettings(request: CreateRequest): VmdkCreateSettings {
  const o = request.options;
  const backingFormat = o.backing_fmt as string | undefined;
  if (backingFormat !== undefined && backingFormat !== 'vmdk') throw new BlkioError('EINVAL', 'backing_file must be a vmdk image');
  const adapterType = enumValue(o.adapter_type as string | undefined, ADAPTER_TYPES, 'ide');
  const subformat = enumValue(o.subformat as string | undefined, SUBFORMATS, 'monolithicSparse');
  let hwVersion = o.hwversion === 'undefined' ? undefined : (o.hwversion as string | undefined);
  if (o.compat6 === true) {
    if (hwVersion !== undefined) throw new BlkioError('EINVAL', 'compat6 cannot be enabled with hwversion set');
    hwVersion = '6';
  }
  const kind: ExtentKind = {
    flat: subformat === 'monolithicFlat' || subformat === 'twoGbMaxExtentFlat',
    compress: subformat === 'streamOptimized',
    zeroedGrain: o.zeroed_grain === true,
  };
  if (kind.flat && o.backing_file !== undefined) throw new BlkioError('ENOTSUP', "Flat image can't have backing file");
  if (kind.flat && kind.zeroedGrain) throw new BlkioError('ENOTSUP', "Flat image can't enable zeroed grain");
  return {
    subformat, adapterType, hwVersion: hwVersion ?? '4', toolsVersion: (o.toolsversion as string | undefined) ?? '2147483647',
    split: subformat.startsWith('twoGbMaxExtent'), kind,
  };
}

/** The CID of the backing file (named relative to the new image), which has to be a vmdk image. */
async function backingCid(file: BdrvChild, filename: string, backingFile: string): Promise<number> {
  const layer = file.node.layer;
  const path = backingFile.startsWith('/') ? backingFile : dirname(filename) + backingFile;
  const node = await layer.openNode(path, { 'read-only': 'on', 'force-share': 'on', backing: null });
  try {
    if (node.driver.name !== 'vmdk') throw new BlkioError('EINVAL', `Invalid backing file format: ${node.driver.name}. Must be vmdk`);
    const cid = node.driver.formatSpecific ? ((await node.driver.formatSpecific(node))?.json.cid as number | undefined) : undefined;
    if (cid === undefined) throw new BlkioError('EINVAL', 'Failed to read parent CID');
    return cid;
  } finally {
    await layer.closeNode(node);
  }
}

export function checkVmdkCreateOptions(request: CreateRequest): void {
  createSettings(request);
}

export async function createVmdk(file: BdrvChild, request: CreateRequest): Promise<void> {
  const size = request.size;
  const { subformat, adapterType, hwVersion, toolsVersion, split, kind } = createSettings(request);
  const line = (sectors: number, name: string): string =>
    kind.flat ? `RW ${sectors} FLAT "${name}" 0\n` : `RW ${sectors} SPARSE "${name}"\n`;
  const { path, prefix, postfix } = decompose(request.filename);
  let lines = '';
  let created = 0;
  if (!split && !kind.flat) {
    await initExtent(file, size, kind);
    lines += line(Math.ceil(size / SECTOR), `${prefix}${postfix}`);
    created = size;
  } else {
    await initExtent(file, 0, kind);
  }
  const extentSize = split ? SPLIT_SIZE : size;
  for (let index = 1; created < size; index++) {
    const extentBytes = Math.min(size - created, extentSize);
    const name = split ? `${prefix}-${kind.flat ? 'f' : 's'}${String(index).padStart(3, '0')}${postfix}` : `${prefix}-flat${postfix}`;
    if (!request.withNewFile) throw new BlkioError('ENOTSUP', `Subformat '${subformat}' needs files of its own`);
    await request.withNewFile(path + name, (extent) => initExtent(extent, extentBytes, kind));
    lines += line(Math.ceil(extentBytes / SECTOR), name);
    created += extentBytes;
  }

  const backingFile = request.options.backing_file as string | undefined;
  const parent = backingFile === undefined ? undefined : { cid: await backingCid(file, request.filename, backingFile), filename: backingFile };
  const cid = (Math.random() * 2 ** 32) >>> 0;
  const text = Buffer.from(descriptor({
    cid, createType: subformat, parent, extentLines: lines, hwVersion, size, adapterType, toolsVersion,
  }), 'latin1');
  const descOffset = !split && !kind.flat ? 0x200 : 0;
  await file.write(descOffset, text.length, text);
  if (descOffset === 0) await file.truncate(text.length, false);
}
