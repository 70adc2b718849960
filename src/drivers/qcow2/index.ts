/**
 * `qcow2`: QEMU's copy-on-write image format. This file is the driver table; the format's
 * concerns live beside it: header, mapping (L1/L2), refcount (allocation), cache, allocation
 * (allocating writes and COW), read, write, zero (zero writes, discard), compressed, truncate,
 * create and check.
 */
import { BlkioError, errno, toBlkioError } from '../../errors.js';
import { ROLE_DATA, ROLE_IMAGE, type BlockDriver, type BlockStatusResult, type OptionSpecs, type StatusList } from '../../block/driver.js';
import type { BlockNode } from '../../block/node.js';
import type { OpenContext } from '../../block/graph.js';
import { debugEvent } from '../../block/io.js';
import { refreshPermissions } from '../../block/permissions.js';
import {
  REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQ_ZERO_WRITE, STATUS_COMPRESSED, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_RECURSE, STATUS_ZERO,
} from '../../block/flags.js';
import { countReferencedClusters, requireAlignedRefblocks } from './refcount.js';
import {
  BACKING_FILE_MAX, COMPAT_LAZY_REFCOUNTS, COMPRESSION_NAMES, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, QCOW_MAGIC,
} from './header.js';
import { forEachHostOffsetNow, getHostOffset, getHostOffsetNow, SubclusterType, type HostMapping } from './mapping.js';
import { applyRuntimeOptions, loadState, markClean, OVERLAP_CHECKS, requireUsable, runtimeOptions, updateHeader } from './open.js';
import { readGuest } from './read.js';
import { writeCompressedGuest, writeGuest } from './write.js';
import { discardGuest, writeZeroesGuest } from './zero.js';
import { truncateImage } from './truncate.js';
import { createImage, QCOW2_CREATE_OPTIONS } from './create.js';
import { checkImage } from './check.js';
import { listPersistentBitmaps, measureImage } from './measure.js';
import { BITMAP_FLAG_AUTO, BITMAP_FLAG_IN_USE, readBitmapDirectory } from './bitmaps.js';
import {
  checkCanStoreBitmap, loadPersistentBitmaps, makeBitmapsWritable, removePersistentBitmap, storePersistentBitmaps,
} from './bitmaps-store.js';
import { amendImage, QCOW2_AMEND_OPTIONS } from './amend.js';
import { makeEmpty } from './empty.js';
import { fileAllocatedSize, takeFilePermissions } from '../format-helpers.js';
import { createSnapshot, deleteSnapshot, gotoSnapshot, listSnapshots, loadSnapshotTemporarily } from './snapshots.js';
import { SECTOR_SIZE } from '../../crypto/sector-cipher.js';
import { dataFileIsRaw, hasDataFile, vmStateOffset, writeStderr, type Qcow2State } from './state.js';

export type { Qcow2State } from './state.js';

const options: OptionSpecs = {
  'lazy-refcounts': { type: 'bool' },
  'pass-discard-request': { type: 'bool' },
  'pass-discard-snapshot': { type: 'bool' },
  'pass-discard-other': { type: 'bool' },
  'overlap-check': { type: 'string' },
  'overlap-check.template': { type: 'string' },
  ...Object.fromEntries(OVERLAP_CHECKS.map((name) => [`overlap-check.${name}`, { type: 'bool' as const }])),
  'cache-size': { type: 'size' },
  'l2-cache-size': { type: 'size' },
  'l2-cache-entry-size': { type: 'size' },
  'refcount-cache-size': { type: 'size' },
  'cache-clean-interval': { type: 'number' },
};

/** Write the caches back: L2 tables (after what they depend on), then refcounts unless they are lazy. */
async function writeCaches(s: Qcow2State): Promise<void> {
  await s.l2Cache.write();
  if (!(s.header.incompatibleFeatures & INCOMPAT_DIRTY)) await s.refcountCache.write();
}

export const qcow2Driver: BlockDriver<Qcow2State> = {
  name: 'qcow2',
  kind: 'format',
  supportsBacking: true,
  options,

  probe(header) {
    return header.length >= 8 && new DataView(header.buffer, header.byteOffset).getUint32(0) === QCOW_MAGIC &&
      new DataView(header.buffer, header.byteOffset).getUint32(4) >= 2 ? 100 : 0;
  },

  async open(node, ctx) {
    const encryptOptions = ctx.takeOptions('encrypt');
    const file = (await ctx.openChild('file', ROLE_IMAGE))!;
    const takeWritePermissions = (): void => takeFilePermissions(node, file);
    const s = await loadState(file, {
      readOnly: node.readOnly, opts: ctx.opts, discardUnmap: node.discardUnmap, checkMode: node.layer.openForCheck,
      encryptOptions, takeFilePermissions: takeWritePermissions, withoutIo: ctx.withoutIo,
    });
    s.node = node;
    await openDataFile(s, ctx);
    await loadPersistentBitmaps(s, node, takeWritePermissions);
    node.backingFile = s.backingFile ?? '';
    node.backingFormat = s.backingFormat ?? '';
    if (!node.readOnly && s.header.incompatibleFeatures & INCOMPAT_DIRTY) {
      s.pendingRepair = async () => {
        const result = await checkImage(s, 'all', (line) => writeStderr(`${line}\n`)).catch((e: unknown) => toBlkioError(e));
        if (result instanceof BlkioError || result.checkErrors) {
          s.unusable = true;
          const code = result instanceof BlkioError ? result.code : 'EIO';
          throw new BlkioError(code, `Could not repair dirty image: ${new BlkioError(code).strerror}`);
        }
      };
    }
    return s;
  },

  async close(node) {
    const s = node.state;
    if (!s || s.readOnly) return;
    await requireUsable(s).catch(() => {});
    if (s.unusable) return;
    // QEMU flushes a node before it closes it and reports no failure there; a corruption found
    // on the way leaves nothing for the close to do.
    await s.lock.run(() => writeCaches(s)).catch(() => {});
    if (s.unusable) return;
    // As QEMU's close: each cache is flushed even when the other failed, failures are only
    // reported, and the image is marked clean only when both made it to disk.
    await s.lock.run(async () => {
      await storePersistentBitmaps(s, node).catch((e: unknown) => {
        node.layer.warn(`Lost persistent bitmaps during inactivation of node '${node.nodeName}': ${toBlkioError(e).message}`);
      });
      let flushed = true;
      for (const [cache, what] of [[s.l2Cache, 'L2 table'], [s.refcountCache, 'refcount block']] as const) {
        try {
          await cache.flush();
        } catch (e) {
          flushed = false;
          node.layer.warn(`Failed to flush the ${what} cache: ${toBlkioError(e).strerror}`);
        }
      }
      if (flushed) await markClean(s);
    });
  },

  refreshLimits(node) {
    const s = node.state;
    node.limits = {
      // Encryption works on whole sectors.
      requestAlignment: s.encryption ? SECTOR_SIZE : 1, maxTransfer: 0, zeroAlignment: s.subclusterSize, maxZeroes: 0,
      discardAlignment: s.clusterSize, maxDiscard: 0,
    };
  },

  supportedZeroFlags: (node) => (node.state.header.version >= 3 ? REQ_MAY_UNMAP | REQ_NO_FALLBACK : 0),

  getLength: (node) => node.state.size,

  allocatedSize: (node) => fileAllocatedSize(node.state.file),

  async read(node, offset, bytes, buf) {
    await requireUsable(node.state);
    await readGuest(node.state, offset, bytes, buf);
  },

  async write(node, offset, bytes, buf) {
    await requireUsable(node.state);
    await writeGuest(node.state, offset, bytes, buf);
  },

  async writeZeroes(node, offset, bytes, flags) {
    await requireUsable(node.state);
    await writeZeroesGuest(node.state, node, offset, bytes, flags);
  },

  async writeCompressed(node, offset, bytes, buf) {
    await requireUsable(node.state);
    await writeCompressedGuest(node.state, offset, bytes, buf);
  },

  // The VM state is guest data beyond the disk, mapped and allocated like any other.
  async saveVmState(node, pos, bytes, buf) {
    await requireUsable(node.state);
    await debugEvent(node.state.file.node, 'vmstate_save');
    await writeGuest(node.state, vmStateOffset(node.state) + pos, bytes, buf);
  },

  async loadVmState(node, pos, bytes, buf) {
    await requireUsable(node.state);
    await debugEvent(node.state.file.node, 'vmstate_load');
    await readGuest(node.state, vmStateOffset(node.state) + pos, bytes, buf);
  },

  async discard(node, offset, bytes) {
    await requireUsable(node.state);
    await discardGuest(node.state, offset, bytes);
  },

  async reopen(node) {
    const s = node.state;
    if (node.readOnly && !s.readOnly) {
      await requireUsable(s);
      await s.lock.run(async () => {
        // The bitmaps stay in memory, read-only, as if the image had been opened so.
        await storePersistentBitmaps(s, node);
        for (const bitmap of node.dirtyBitmaps) if (bitmap.persistent) bitmap.readonly = true;
        await writeCaches(s);
        await markClean(s);
      });
    }
    const becomesWritable = s.readOnly && !node.readOnly;
    s.readOnly = node.readOnly;
    if (becomesWritable) {
      // As in QEMU, a failure leaves the bitmaps read-only and the reopen done.
      await makeBitmapsWritable(s, node).catch((e: unknown) => {
        node.layer.warn(`${node.nodeName}: Failed to make dirty bitmaps writable: ${toBlkioError(e).message}`);
      });
    }
  },

  joinOptions(given, old) {
    const kept = { ...old };
    const isOverlapOption = (key: string) => key === 'overlap-check' || key.startsWith('overlap-check.');
    // A new overlap template replaces every old overlap option, a new total cache size the old split.
    if (given['overlap-check'] !== undefined || given['overlap-check.template'] !== undefined) {
      for (const key of Object.keys(kept)) if (isOverlapOption(key)) delete kept[key];
    }
    if (given['cache-size'] !== undefined) {
      delete kept['l2-cache-size'];
      delete kept['refcount-cache-size'];
    }
    // QEMU 7.2 keeps an old total cache size only when it is given again.
    delete kept['cache-size'];
    return { ...kept, ...given };
  },

  prepareReopen(node, opts) {
    const s = node.state;
    const runtime = runtimeOptions(s, opts, node.discardUnmap);
    return () => s.lock.run(async () => {
      if (!s.readOnly) {
        // The caches are replaced: what they hold is written first.
        await writeCaches(s);
        if (s.lazyRefcounts && !runtime.lazyRefcounts) await markClean(s);
      }
      applyRuntimeOptions(s, runtime);
    });
  },

  async flush(node) {
    const s = node.state;
    if (s.readOnly) return;
    await requireUsable(s);
    await s.lock.run(() => writeCaches(s));
  },

  supportedTruncateFlags: () => REQ_ZERO_WRITE,

  async truncate(node, size, _exact, prealloc, flags) {
    await requireUsable(node.state);
    await truncateImage(node.state, size, prealloc, (flags & REQ_ZERO_WRITE) !== 0);
  },

  async blockStatus(node, offset, bytes) {
    const s = node.state;
    await requireUsable(s);
    const m = await s.lock.run(() => getHostOffset(s, offset, Math.min(bytes, 0x7fffffff)));
    if (isMappedData(m)) s.metadataPreallocation ??= await s.lock.run(() => detectMetadataPreallocation(s)).catch(() => false);
    return mappingStatus(node, m);
  },

  blockStatusNow(node, offset, bytes) {
    const s = node.state;
    if (s.pendingRepair || s.unusable || s.lock.held) return undefined;
    const m = getHostOffsetNow(s, offset, Math.min(bytes, 0x7fffffff));
    if (!m || (s.metadataPreallocation === undefined && isMappedData(m))) return undefined;
    return mappingStatus(node, m);
  },

  blockStatusListNow(node, offset, bytes, list) {
    const s = node.state;
    if (s.pendingRepair || s.unusable || s.lock.held) return;
    forEachHostOffsetNow(s, offset, Math.min(bytes, 0x7fffffff), pushMapping, list);
  },

  getInfo(node) {
    const s = node.state;
    return {
      clusterSize: s.clusterSize,
      ...(s.extendedL2 ? { subclusterSize: s.subclusterSize } : {}),
      vmStateOffset: vmStateOffset(s),
      isDirty: (s.header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
      encrypted: s.header.cryptMethod !== 0,
    };
  },

  async formatSpecific(node) {
    const s = node.state;
    const h = s.header;
    const compression = COMPRESSION_NAMES[h.compressionType] ?? String(h.compressionType);
    const refcountBits = 2 ** s.refcountOrder;
    if (h.version < 3) {
      return {
        type: 'qcow2',
        json: {
          compat: '0.10', 'compression-type': compression, 'refcount-bits': refcountBits,
          ...(s.encryptionInfo ? { encrypt: s.encryptionInfo } : {}),
        },
      };
    }
    const lazy = (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
    const corrupt = (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n;
    const bitmaps = (await readBitmapDirectory(s)).map((e) => ({
      flags: [
        ...(e.flags & BITMAP_FLAG_IN_USE ? ['in-use'] : []),
        ...(e.flags & BITMAP_FLAG_AUTO ? ['auto'] : []),
      ],
      name: e.name,
      granularity: 2 ** e.granularityBits,
    }));
    return {
      type: 'qcow2',
      json: {
        compat: '1.1', 'compression-type': compression, 'lazy-refcounts': lazy,
        ...(bitmaps.length ? { bitmaps } : {}), 'refcount-bits': refcountBits,
        ...(s.dataFileName !== undefined ? { 'data-file': s.dataFileName } : {}),
        ...(hasDataFile(s) ? { 'data-file-raw': dataFileIsRaw(s) } : {}),
        ...(s.encryptionInfo ? { encrypt: s.encryptionInfo } : {}), corrupt, 'extended-l2': s.extendedL2,
      },
    };
  },

  createOptions: QCOW2_CREATE_OPTIONS,
  removesFailedImage: true,
  create: createImage,
  measure: measureImage,
  amendOptions: QCOW2_AMEND_OPTIONS,
  async amend(node, options, force, progress) {
    await requireUsable(node.state);
    await amendImage(node, options, force, progress);
  },
  persistentBitmaps: (node) => listPersistentBitmaps(node.state),
  supportsPersistentDirtyBitmaps: (node) => node.state.header.version >= 3,
  async canStoreNewDirtyBitmap(node, name, granularity) {
    checkCanStoreBitmap(node.state, node, name, granularity);
  },
  async removePersistentDirtyBitmap(node, name) {
    await requireUsable(node.state);
    await removePersistentBitmap(node.state, name);
  },

  async check(node, repair, report) {
    const s = node.state;
    // A corruption marked by an earlier pass (the repair before the double check) took the
    // driver off the node in QEMU.
    if (s.unusable) throw errno('ENOMEDIUM');
    // qemu-img check sees the image as it is: a pending open-time repair is this check's job.
    s.pendingRepair = undefined;
    return checkImage(s, repair, report);
  },

  async makeEmpty(node) {
    await requireUsable(node.state);
    await makeEmpty(node.state);
  },

  snapshotList: (node) => listSnapshots(node.state),

  // Internal snapshots would need the data clusters refcounted.
  async snapshotCreate(node, info) {
    await requireUsable(node.state);
    if (hasDataFile(node.state)) throw errno('ENOTSUP');
    await createSnapshot(node.state, info);
  },

  async snapshotGoto(node, idOrName) {
    await requireUsable(node.state);
    if (hasDataFile(node.state)) throw errno('ENOTSUP');
    await gotoSnapshot(node.state, idOrName, (line) => node.layer.warn(line));
  },

  async snapshotDelete(node, id, name) {
    await requireUsable(node.state);
    await deleteSnapshot(node.state, id, name);
  },

  async snapshotLoadTmp(node, id, name) {
    await requireUsable(node.state);
    await loadSnapshotTemporarily(node.state, id, name);
  },

  async changeBackingFile(node, filename, format) {
    const s = node.state;
    await requireUsable(s);
    if (filename.length > BACKING_FILE_MAX) throw new BlkioError('EINVAL');
    // A raw data file is the whole guest disk: nothing may show through from a backing file.
    if (filename && dataFileIsRaw(s)) throw new BlkioError('EINVAL');
    await s.lock.run(async () => {
      s.backingFile = filename || undefined;
      s.backingFormat = format || undefined;
      await updateHeader(s);
    });
    node.backingFile = filename;
    node.backingFormat = format;
  },
};

/**
 * The `data-file` child: given by reference or definition, else named by the image header
 * (a path as it is, not relative to the image). An open without I/O (qemu-img info) leaves
 * it closed, as QEMU does, and ignores whatever describes it.
 */
async function openDataFile(s: Qcow2State, ctx: OpenContext): Promise<void> {
  if (ctx.withoutIo) {
    ctx.takeOptions('data-file');
    delete ctx.remaining['data-file'];
    return;
  }
  const given = await ctx.openChild('data-file', ROLE_DATA, { allowNone: true });
  // Attached, the child takes its permissions first: a conflict is the error QEMU reports.
  if (given) refreshPermissions(new Map(), [ctx.node]);
  if (!hasDataFile(s)) {
    if (given) throw new BlkioError('EINVAL', "'data-file' can only be set for images with an external data file");
    if (dataFileIsRaw(s)) throw new BlkioError('EINVAL', 'data-file-raw requires a data file');
    return;
  }
  const child = given ?? (s.dataFileName !== undefined ? await ctx.openChild('data-file', ROLE_DATA, { filename: s.dataFileName }) : undefined);
  if (!child) throw new BlkioError('EINVAL', "'data-file' is required for this image");
  s.dataFile = child;
}

/** Data at a host offset: a type that may sit on preallocated host space never written. */
function isMappedData(m: HostMapping): boolean {
  return m.type === SubclusterType.Normal;
}

/** Block status of a mapping; metadataPreallocation must be known when it is mapped data. */
function mappingStatus(node: BlockNode<Qcow2State>, m: HostMapping): BlockStatusResult {
  const s = node.state;
  const status = mappingStatusBits(s, m);
  return status & STATUS_OFFSET_VALID
    ? { status, pnum: m.bytes, map: m.hostOffset, file: s.dataFile.node }
    : { status, pnum: m.bytes };
}

/** Add a mapping's status to the list (false when it is full, or the mapping is data before metadataPreallocation is known). */
function pushMapping(s: Qcow2State, m: HostMapping, list: StatusList): boolean {
  return (s.metadataPreallocation !== undefined || !isMappedData(m)) && list.push(mappingStatusBits(s, m), m.bytes, m.hostOffset, s.dataFile.node);
}

/** The STATUS_* bits of a mapping (see mappingStatus). */
function mappingStatusBits(s: Qcow2State, m: HostMapping): number {
  let status = 0;
  // Encrypted data at a host offset is no use to anyone reading the file directly.
  const mapped = m.type === SubclusterType.Normal || m.type === SubclusterType.ZeroAlloc || m.type === SubclusterType.UnallocatedAlloc;
  if (mapped && !s.header.cryptMethod) status |= STATUS_OFFSET_VALID;
  if (m.type === SubclusterType.ZeroPlain || m.type === SubclusterType.ZeroAlloc) {
    status |= STATUS_ZERO;
  } else if (m.type !== SubclusterType.UnallocatedPlain && m.type !== SubclusterType.UnallocatedAlloc) {
    status |= STATUS_DATA;
  }
  if (m.type === SubclusterType.Compressed) status |= STATUS_COMPRESSED;
  // Preallocated metadata points at host space never written: let the file say where it is a hole.
  if (isMappedData(m) && s.metadataPreallocation) status |= STATUS_RECURSE;
  return status;
}

/**
 * Whether the image looks metadata-preallocated: clearly more clusters are referenced than the
 * file has allocated (at least a ninth more, and two more), as QEMU judges it once per open.
 */
async function detectMetadataPreallocation(s: Qcow2State): Promise<boolean> {
  const file = s.file.node;
  const allocated = await file.driver.allocatedSize?.(file);
  if (allocated === undefined) return false;
  const realClusters = Math.floor(allocated / s.clusterSize);
  const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
  const endCluster = Math.ceil(file.getLength() / s.clusterSize);
  // Fewer clusters in the file than the threshold: no count reaches it (a sparse, not preallocated,
  // file), but the count would have failed on a corrupt refcount block.
  if (endCluster < threshold) {
    if (endCluster > 0) await requireAlignedRefblocks(s, endCluster);
    return false;
  }
  return (await countReferencedClusters(s, endCluster, threshold)) >= threshold;
}
