/**
 * `vmdk`: VMware's disk format. One image is a list of extents (extent.ts) described by a text
 * descriptor (descriptor.ts), embedded in a monolithic sparse file or a file of its own
 * (monolithicFlat, twoGbMaxExtent*, vmfs); creation is create.ts.
 */
import { BlkioError, errno } from '../../errors.js';
import { ROLE_DATA, ROLE_IMAGE, ROLE_METADATA, type BlockDriver, type CheckResult } from '../../block/driver.js';
import type { BdrvChild } from '../../block/child.js';
import type { OpenContext } from '../../block/graph.js';
import type { BlockNode } from '../../block/node.js';
import { STATUS_COMPRESSED, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_RECURSE, STATUS_ZERO } from '../../block/flags.js';
import { Mutex } from '../../block/mutex.js';
import {
  DESC_SIZE, descriptorCid, descriptorCreateType, descriptorText, dirname, parentFileNameHint, parseExtentLines, withCid,
} from './descriptor.js';
import {
  flatExtent, GTE_ZEROED, lookupGrain, openVmdk3, openVmdk4, readGrain, readStart, SECTOR, updateGrainEntry, VMDK3_MAGIC,
  VMDK4_MAGIC, writeGrain, type Extent,
} from './extent.js';
import { checkVmdkCreateOptions, createVmdk, VMDK_CREATE_OPTIONS } from './create.js';
import { openFailure } from '../format-helpers.js';

interface VmdkState {
  file: BdrvChild;
  extents: Extent[];
  /** Where the descriptor is in `file` (0x200 in a sparse file). */
  descOffset: number;
  createType: string;
  cid: number;
  parentCid: number;
  /** The first write of an open gives the image a new CID. */
  cidUpdated: boolean;
  lock: Mutex;
}

function magicOf(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, false);
}

interface Opening {
  ctx: OpenContext;
  readOnly: boolean;
  extents: Extent[];
  createType?: string;
}

function nextStartSector(o: Opening): number {
  return o.extents.at(-1)?.endSector ?? 0;
}

/** A sparse extent file (its first bytes in `start`), or the embedded descriptor it points to. */
async function openSparse(o: Opening, file: BdrvChild, start: Uint8Array, descriptorFile: BdrvChild): Promise<void> {
  const magic = magicOf(start);
  if (magic === VMDK3_MAGIC) {
    o.extents.push(await openVmdk3(file, start, nextStartSector(o)));
    return;
  }
  if (magic !== VMDK4_MAGIC) throw new BlkioError('EINVAL', 'Image not in VMDK format');
  const opened = await openVmdk4(file, start, nextStartSector(o), o.readOnly);
  if ('descriptor' in opened) {
    await openDescriptor(o, descriptorText(opened.descriptor), descriptorFile);
    return;
  }
  o.createType ??= 'monolithicSparse';
  if (opened.compressed) o.createType = 'streamOptimized';
  o.extents.push(opened);
}

/** The extents a descriptor lists, each file opened as child `extents.N`. */
async function openDescriptor(o: Opening, desc: string, descriptorFile: BdrvChild): Promise<void> {
  o.createType = descriptorCreateType(desc);
  for (const line of parseExtentLines(desc)) {
    const path = line.filename.startsWith('/') ? line.filename : dirname(descriptorFile.node.filename) + line.filename;
    const flat = line.type === 'FLAT' || line.type === 'VMFS';
    const file = (await o.ctx.openChild(`extents.${o.extents.length}`, flat ? ROLE_DATA : ROLE_DATA | ROLE_METADATA, { filename: path }))!;
    if (flat) {
      o.extents.push(flatExtent(file, line.sectors, line.flatOffset, nextStartSector(o), line.type));
    } else if (line.type === 'SESPARSE') {
      throw new BlkioError('ENOTSUP', `Unsupported extent type '${line.type}'`);
    } else {
      await openSparse(o, file, await readStart(file, 0), descriptorFile);
      o.extents.at(-1)!.type = line.type;
    }
  }
}

async function readDescriptorAt(file: BdrvChild, offset: number): Promise<string> {
  const desc = new Uint8Array(DESC_SIZE);
  await file.read(offset, DESC_SIZE, desc);
  return descriptorText(desc.subarray(0, DESC_SIZE - 1));
}

function findExtent(s: VmdkState, offset: number): Extent | undefined {
  const sector = Math.floor(offset / SECTOR);
  return s.extents.find((e) => sector < e.endSector);
}

/** The extent of `offset`, the offset within it, and the bytes up to the end of its grain. */
function locate(s: VmdkState, offset: number, bytes: number): { e: Extent; rel: number; inGrain: number; n: number } {
  const e = findExtent(s, offset);
  if (!e) throw errno('EIO');
  const rel = offset - (e.endSector - e.sectors) * SECTOR;
  const grainBytes = e.clusterSectors * SECTOR;
  const inGrain = rel % grainBytes;
  return { e, rel, inGrain, n: Math.min(bytes, grainBytes - inGrain) };
}

async function updateCid(s: VmdkState): Promise<void> {
  if (s.cidUpdated) return;
  const desc = new Uint8Array(DESC_SIZE);
  await s.file.read(s.descOffset, DESC_SIZE, desc);
  const updated = withCid(desc, (Math.random() * 2 ** 32) >>> 0);
  if (!updated) throw errno('EINVAL');
  // As in QEMU 7.2, the write ends where the file's last sector does: a descriptor file does not grow to 10 KiB.
  const bytes = Math.min(DESC_SIZE, Math.ceil(s.file.getLength() / SECTOR) * SECTOR - s.descOffset);
  await s.file.write(s.descOffset, bytes, updated);
  await s.file.flush();
  s.cidUpdated = true;
}

/** Write guest data; grains are allocated as needed (compressed extents: whole new grains only). */
async function writeGuest(node: BlockNode<VmdkState>, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  const s = node.state;
  if (Math.ceil(offset / SECTOR) > Math.ceil(getLength(s) / SECTOR)) throw errno('EIO');
  const backing = node.backing;
  const copyFromBacking = backing && (async (at: number, n: number, out: Uint8Array) => {
    if (!backingCidMatches(node)) throw errno('EINVAL');
    await backing.read(at, n, out);
  });
  for (let done = 0; done < bytes;) {
    const { e, rel, inGrain, n } = locate(s, offset + done, bytes - done);
    let m = await lookupGrain(e, rel, !e.compressed, inGrain, inGrain + n, copyFromBacking || undefined);
    if (e.compressed) {
      if (m.kind === 'allocated') {
        s.file.node.layer.warn('Could not write to allocated cluster for streamOptimized');
        throw errno('EIO');
      }
      m = await lookupGrain(e, rel, true, 0, 0, copyFromBacking || undefined);
    }
    if (m.kind !== 'allocated') throw errno('EINVAL');
    await writeGrain(e, m.offset, inGrain, buf.subarray(done, done + n), offset + done);
    if (m.newAllocation) await updateGrainEntry(e, m.slot!, m.offset / SECTOR).catch(() => { throw errno('EIO'); });
    done += n;
    await updateCid(s);
  }
}

/** Zeroed-grain entries for whole grains; ENOTSUP (the generic layer writes zeroes) otherwise. */
async function writeZeroGrains(s: VmdkState, offset: number, bytes: number, dryRun: boolean): Promise<void> {
  for (let done = 0; done < bytes;) {
    const { e, rel, inGrain, n } = locate(s, offset + done, bytes - done);
    const m = await lookupGrain(e, rel, false);
    if (m.kind === 'error') throw errno('EINVAL');
    const grainBytes = e.clusterSectors * SECTOR;
    if (!e.hasZeroGrain || inGrain || n < grainBytes) throw errno('ENOTSUP');
    if (!dryRun && m.kind !== 'zeroed') {
      if (!m.slot) throw errno('EIO');
      await updateGrainEntry(e, m.slot, GTE_ZEROED).catch(() => { throw errno('EIO'); });
    }
    done += grainBytes;
    if (!dryRun) await updateCid(s);
  }
}

/** The parent CID names the backing image's CID (a backing file of another format never matches). */
function backingCidMatches(node: BlockNode<VmdkState>): boolean {
  const parent = node.backing!.node;
  return parent.driver === vmdkDriver && (parent.state as VmdkState).cid === node.state.parentCid;
}

function getLength(s: VmdkState): number {
  return (s.extents.at(-1)?.endSector ?? 0) * SECTOR;
}

/** Extents of one kind give the image a cluster size (flat ones none); mixed ones no information at all. */
function sameKind(a: Extent, b: Extent): boolean {
  return a.flat === b.flat && a.compressed === b.compressed && (a.flat || a.clusterSectors === b.clusterSectors);
}

async function openImage(node: BlockNode<VmdkState>, ctx: OpenContext, file: BdrvChild): Promise<VmdkState> {
  const start = await readStart(file, 0);
  const o: Opening = { ctx, readOnly: node.readOnly, extents: [] };
  let descOffset = 0;
  const magic = magicOf(start);
  if (magic === VMDK3_MAGIC || magic === VMDK4_MAGIC) {
    await openSparse(o, file, start, file);
    descOffset = 0x200;
  } else {
    await openDescriptor(o, descriptorText(start), file);
  }
  const text = await readDescriptorAt(file, descOffset);
  const parent = parentFileNameHint(text);
  if (parent !== undefined) {
    node.backingFile = parent;
    node.backingFormat = 'vmdk';
  }
  const cid = descriptorCid(text, 'CID');
  const parentCid = descriptorCid(text, 'parentCID');
  if (cid === undefined || parentCid === undefined) throw errno('EINVAL');
  return {
    file, extents: o.extents, descOffset, createType: o.createType ?? 'monolithicSparse', cid, parentCid,
    cidUpdated: false, lock: new Mutex(),
  };
}

export const vmdkDriver: BlockDriver<VmdkState> = {
  name: 'vmdk',
  kind: 'format',
  supportsBacking: true,
  options: {},

  probe(header) {
    if (header.length < 4) return 0;
    const magic = magicOf(header);
    if (magic === VMDK3_MAGIC || magic === VMDK4_MAGIC) return 100;
    return probeDescriptor(Buffer.from(header).toString('latin1')) ? 100 : 0;
  },

  async open(node, ctx) {
    const file = (await ctx.openChild('file', ROLE_IMAGE))!;
    return openImage(node, ctx, file).catch((e: unknown) => {
      throw openFailure(file, e);
    });
  },

  async reopen() {},

  refreshLimits(node) {
    const sparse = node.state.extents.filter((e) => !e.flat).map((e) => e.clusterSectors * SECTOR);
    node.limits = { ...node.limits, zeroAlignment: Math.max(node.limits?.zeroAlignment ?? 0, ...sparse) };
  },

  getLength: (node) => getLength(node.state),

  async allocatedSize(node) {
    const s = node.state;
    const files = [s.file.node, ...s.extents.map((e) => e.file.node).filter((n) => n !== s.file.node)];
    let total = 0;
    for (const f of files) {
      const size = await f.driver.allocatedSize?.(f);
      if (size === undefined) return undefined;
      total += size;
    }
    return total;
  },

  async read(node, offset, bytes, buf) {
    const s = node.state;
    await s.lock.run(async () => {
      for (let done = 0; done < bytes;) {
        const { e, rel, inGrain, n } = locate(s, offset + done, bytes - done);
        const m = await lookupGrain(e, rel, false);
        const out = buf.subarray(done, done + n);
        if (m.kind === 'allocated') {
          await readGrain(e, m.offset, inGrain, n, out);
        } else if (node.backing && m.kind !== 'zeroed') {
          if (!backingCidMatches(node)) throw errno('EINVAL');
          await node.backing.read(offset + done, n, out);
        } else {
          out.fill(0);
        }
        done += n;
      }
    });
  },

  async write(node, offset, bytes, buf) {
    const s = node.state;
    await s.lock.run(() => writeGuest(node, offset, bytes, buf));
  },

  async writeCompressed(node, offset, bytes, buf) {
    const s = node.state;
    if (bytes > 0) {
      await s.lock.run(() => writeGuest(node, offset, bytes, buf));
      return;
    }
    // The end of a compressed stream: every extent file ends on a whole sector.
    for (const e of s.extents) await e.file.truncate(Math.ceil(e.file.getLength() / SECTOR) * SECTOR, false);
  },

  async writeZeroes(node, offset, bytes) {
    const s = node.state;
    await s.lock.run(async () => {
      // Tried first without a change, so that a request it cannot do whole changes nothing.
      await writeZeroGrains(s, offset, bytes, true);
      await writeZeroGrains(s, offset, bytes, false);
    });
  },

  async blockStatus(node, offset, bytes) {
    const s = node.state;
    const { e, rel, inGrain, n } = locate(s, offset, bytes);
    const m = await s.lock.run(() => lookupGrain(e, rel, false));
    if (m.kind === 'error') throw errno('EIO');
    if (m.kind === 'unallocated') return { status: 0, pnum: n };
    if (m.kind === 'zeroed') return { status: STATUS_ZERO, pnum: n };
    if (e.compressed) return { status: STATUS_DATA | STATUS_COMPRESSED, pnum: n, file: e.file.node };
    return {
      status: STATUS_DATA | STATUS_OFFSET_VALID | (e.flat ? STATUS_RECURSE : 0), pnum: n, map: m.offset + inGrain, file: e.file.node,
    };
  },

  getInfo(node) {
    const [first, ...rest] = node.state.extents;
    if (!first || rest.some((e) => !sameKind(first, e))) throw errno('ENOTSUP');
    return { ...(first.flat ? {} : { clusterSize: first.clusterSectors * SECTOR }), needsCompressedWrites: first.compressed };
  },

  formatSpecific(node) {
    const s = node.state;
    return {
      type: 'vmdk',
      json: {
        'create-type': s.createType, cid: s.cid, 'parent-cid': s.parentCid,
        extents: s.extents.map((e) => ({
          filename: e.file.node.filename, format: e.type ?? '', 'virtual-size': e.sectors * SECTOR,
          ...(e.compressed ? { compressed: true } : {}),
          ...(e.flat ? {} : { 'cluster-size': e.clusterSectors * SECTOR }),
        })),
      },
    };
  },

  async check(node, repair, report): Promise<CheckResult> {
    if (repair) throw errno('ENOTSUP');
    const s = node.state;
    const totalSectors = getLength(s) / SECTOR;
    for (let sector = 0; sector < totalSectors;) {
      const e = findExtent(s, sector * SECTOR)!;
      const m = await lookupGrain(e, (sector - (e.endSector - e.sectors)) * SECTOR, false);
      // QEMU stops at the first fault and fails the check (with its lookup's -1 for a failed lookup).
      if (m.kind === 'error') {
        report(`ERROR: could not get cluster_offset for sector ${sector}`);
        throw errno('EPERM');
      }
      if (m.kind === 'allocated' && m.offset >= e.file.getLength()) {
        report(`ERROR: cluster offset for sector ${sector} points after EOF`);
        throw errno('EINVAL');
      }
      sector += e.clusterSectors;
    }
    return {
      corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0,
      totalClusters: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0,
    };
  },

  createOptions: VMDK_CREATE_OPTIONS,
  checkCreateOptions: checkVmdkCreateOptions,
  create: createVmdk,
};

/** A descriptor file: comment and blank lines, then `version=1`, `2` or `3` (LF or CRLF). */
function probeDescriptor(text: string): boolean {
  let at = 0;
  while (at < text.length) {
    if (text[at] === '#') {
      const nl = text.indexOf('\n', at);
      at = nl < 0 ? text.length + 1 : nl + 1;
      continue;
    }
    if (text[at] === ' ') {
      while (at < text.length && text[at] === ' ') at++;
      if (text[at] === '\r') at++;
      if (at >= text.length || text[at] !== '\n') return false;
      at++;
      continue;
    }
    return /^version=[123]\r?\n/.test(text.slice(at));
  }
  return false;
}
