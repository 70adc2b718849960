/**
 * Resizing: growing (L1 table first, then metadata or full preallocation of the new range) and
 * shrinking (discard the cut-off clusters, drop their L2 tables and unused refcount blocks,
 * trim the file). The new size is written into the header last.
 */
import { BlkioError, errnoError } from '../../errors.js';
import type { Allocation } from './state.js';
import { linkAllocations, markPrealloc } from './allocation.js';
import { getHi, getLo, makeTable, reftableOffset, setRefcount, getRefcount } from './entries.js';
import { OFFSET_SIZE } from './header.js';
import { growL1Table, shrinkL1Table } from './mapping.js';
import {
  allocClustersAt, freeClusters, getLastCluster, processDiscards, refcountArea, updateMaxRefcountTableIndex,
} from './refcount.js';
import { REQ_ZERO_WRITE } from '../../block/flags.js';
import { clusterDiscard, subclusterZeroize } from './zero.js';
import { hostRangeFor, writeGuest } from './write.js';
import { hasDataFile, sizeToL1, startOfCluster, offsetIntoCluster, type Qcow2State } from './state.js';
import { l2SliceIndex } from './mapping.js';
import { requireResizableBitmaps } from './bitmaps-store.js';

export const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'] as const;

/** `zeroWrite`: the grown area must read as zeroes, not as the (longer) backing file. */
export async function truncateImage(s: Qcow2State, size: number, prealloc: string, zeroWrite = false): Promise<void> {
  if (size % 512) throw new BlkioError('EINVAL', 'The new size must be a multiple of 512');
  if (!(PREALLOC_MODES as readonly string[]).includes(prealloc)) {
    throw new BlkioError('ENOTSUP', `Unsupported preallocation mode '${prealloc}'`);
  }
  if (s.snapshots.length && s.header.version < 3) {
    throw new BlkioError('ENOTSUP', "Can't resize a v2 image which has snapshots");
  }
  await requireResizableBitmaps(s);
  const oldLength = s.size;
  const newL1Size = sizeToL1(s, size);
  if (size < oldLength) {
    if (prealloc !== 'off') throw new BlkioError('EINVAL', "Preallocation can't be used for shrinking an image");
    await shrink(s, size, oldLength, newL1Size);
  } else {
    await s.lock.run(() => growL1Table(s, newL1Size, true)).catch((e) => {
      throw errnoError('Failed to grow the L1 table', e);
    });
  }
  // An external data file holds data at guest offsets: it is resized with the image, and any
  // preallocation maps its clusters and then preallocates the file itself.
  if (prealloc === 'metadata' || (hasDataFile(s) && prealloc !== 'off')) await preallocateMetadata(s, oldLength, size, prealloc);
  else if (prealloc === 'falloc' || prealloc === 'full') zeroWrite = await preallocateData(s, oldLength, size, prealloc, zeroWrite);
  else if (hasDataFile(s)) await s.dataFile.truncate(size, true);
  if (zeroWrite && size > oldLength) await zeroGrownArea(s, oldLength, size);
  if (prealloc !== 'off') {
    await s.lock.run(async () => {
      await s.l2Cache.write();
      await s.refcountCache.write();
    }).catch((e) => {
      throw errnoError('Failed to flush the preallocated area to disk', e);
    });
  }
  s.size = size;
  s.header.size = size;
  const field = new Uint8Array(8);
  new DataView(field.buffer).setBigUint64(0, BigInt(size));
  try {
    await s.file.write(OFFSET_SIZE, 8, field);
    await s.file.flush();
  } catch (e) {
    throw errnoError('Failed to update the image size', e);
  }
  s.l1VmStateIndex = newL1Size;
}

async function shrink(s: Qcow2State, size: number, oldLength: number, newL1Size: number): Promise<void> {
  const start = Math.ceil(size / s.clusterSize) * s.clusterSize;
  await s.lock.run(async () => {
    if (oldLength > start) {
      await clusterDiscard(s, start, oldLength - start, 'always', true).catch((e) => {
        throw errnoError('Failed to discard cropped clusters', e);
      });
    }
    await shrinkL1Table(s, newL1Size).catch((e) => {
      throw errnoError('Failed to reduce the number of L2 tables', e);
    });
    await shrinkReftable(s).catch((e) => {
      throw errnoError('Failed to discard unused refblocks', e);
    });
    const fileSize = s.file.getLength();
    const last = await getLastCluster(s, fileSize);
    if ((last + 1) * s.clusterSize < fileSize) {
      await s.file.truncate((last + 1) * s.clusterSize, false).catch((e) => {
        s.node?.layer.warn(`Failed to truncate the tail of the image: ${e instanceof BlkioError ? e.message : String(e)}`);
      });
    }
  });
}

/** Drop refcount blocks that count nothing but themselves. */
async function shrinkReftable(s: Qcow2State): Promise<void> {
  const table = makeTable(new Uint8Array(s.refcountTableSize * 8));
  for (let i = 0; i < s.refcountTableSize; i++) {
    const blockOffset = reftableOffset(s.refcountTable, i);
    if (!blockOffset) continue;
    const block = await s.refcountCache.get(blockOffset);
    let unused: boolean;
    const ownCluster = blockOffset / s.clusterSize;
    if (Math.floor(ownCluster / s.refcountBlockSize) === i) {
      const index = ownCluster % s.refcountBlockSize;
      const own = getRefcount(block, s.refcountOrder, index);
      setRefcount(block, s.refcountOrder, index, 0);
      unused = block.data.every((b) => b === 0);
      setRefcount(block, s.refcountOrder, index, own);
    } else {
      unused = block.data.every((b) => b === 0);
    }
    s.refcountCache.put(block);
    if (!unused) {
      table.view.setUint32(i * 8, getHi(s.refcountTable, i));
      table.view.setUint32(i * 8 + 4, getLo(s.refcountTable, i));
    }
  }
  let error: unknown;
  try {
    await s.file.write(s.refcountTableOffset, table.data.length, table.data);
    await s.file.flush();
  } catch (e) {
    error = e;
  }
  for (let i = 0; i < s.refcountTableSize; i++) {
    const blockOffset = reftableOffset(s.refcountTable, i);
    if (blockOffset && !reftableOffset(table, i)) {
      if (error === undefined) await freeClusters(s, blockOffset, s.clusterSize, 'always');
      s.refcountTable.view.setUint32(i * 8, 0);
      s.refcountTable.view.setUint32(i * 8 + 4, 0);
    }
  }
  updateMaxRefcountTableIndex(s);
  if (!s.cacheDiscards) await processDiscards(s, error === undefined);
  if (error !== undefined) throw error;
}

/** Allocate clusters (and L2 tables) for the new range without writing data; `mode` preallocates a grown data file. */
async function preallocateMetadata(s: Qcow2State, offset: number, end: number, mode: string): Promise<void> {
  let hostEnd = 0;
  while (offset < end) {
    const want = Math.min(end - offset, Math.floor(0x7fffffff / s.clusterSize) * s.clusterSize);
    let range;
    try {
      range = await hostRangeFor(s, offset, want);
    } catch (e) {
      throw errnoError('Allocating clusters failed', e);
    }
    markPrealloc(range.metas);
    await linkAllocations(s, range.metas).catch((e) => {
      throw errnoError('Mapping clusters failed', e);
    });
    hostEnd = range.hostOffset + range.bytes;
    offset += range.bytes;
  }
  // The file must reach the end of the last range allocated (COW regions were written already), or reads of it would fail.
  if (hostEnd > s.dataFile.getLength()) await s.dataFile.truncate(hostEnd, false, mode === 'metadata' ? 'off' : mode);
}

/** Whole subclusters become zero in the L2 tables, the head of a partly used one is written with zeroes. */
async function zeroGrownArea(s: Qcow2State, oldLength: number, size: number): Promise<void> {
  const zeroStart = Math.ceil(oldLength / s.subclusterSize) * s.subclusterSize;
  if (size > zeroStart) {
    await s.lock.run(() => subclusterZeroize(s, zeroStart, size - zeroStart, 0)).catch((e) => {
      throw errnoError('Failed to zero out new clusters', e);
    });
  }
  if (zeroStart > oldLength) {
    const bytes = Math.min(zeroStart, size) - oldLength;
    await writeGuest(s, oldLength, bytes, new Uint8Array(bytes)).catch((e) => {
      throw errnoError('Failed to zero out the new area', e);
    });
  }
}

/**
 * falloc/full: new refcount structures behind the image, then one data run for the new range.
 * Returns whether the grown area still needs zeroing: not when the file could zero it as it grew.
 */
async function preallocateData(s: Qcow2State, oldLength: number, size: number, mode: string, zeroWrite: boolean): Promise<boolean> {
  let fileSize = s.file.getLength();
  const last = await s.lock.run(() => getLastCluster(s, fileSize).catch(() => -1));
  fileSize = last >= 0 ? (last + 1) * s.clusterSize : Math.ceil(fileSize / s.clusterSize) * s.clusterSize;
  let dataClusters = (Math.ceil(size / s.clusterSize) * s.clusterSize - startOfCluster(s, oldLength)) / s.clusterSize;
  const l2Tables = Math.ceil(dataClusters / (s.clusterSize / s.l2EntrySize)) + 1;
  const allocationStart = await s.lock.run(() => refcountArea(s, fileSize, dataClusters + l2Tables, true, 0, 0)).catch((e) => {
    throw errnoError('Failed to resize refcount structures', e);
  });
  await s.lock.run(() => allocClustersAt(s, allocationStart, dataClusters)).catch((e) => {
    throw errnoError('Failed to allocate data clusters', e);
  });
  const newFileSize = allocationStart + dataClusters * s.clusterSize;
  // The file zeroing the new area lets the new subclusters be allocated: they read zeroes, not backing data.
  const fileZeroed = zeroWrite && (await s.file.truncate(newFileSize, false, mode, REQ_ZERO_WRITE).then(() => true, () => false));
  try {
    if (!fileZeroed) await s.file.truncate(newFileSize, false, mode);
  } catch (e) {
    await s.lock.run(() => freeClusters(s, allocationStart, dataClusters * s.clusterSize, 'other'));
    throw errnoError('Failed to resize underlying file', e);
  }
  let host = allocationStart;
  let guest = oldLength;
  while (dataClusters) {
    const nb = Math.min(dataClusters, s.l2SliceSize - l2SliceIndex(s, guest));
    const cowStart = offsetIntoCluster(s, guest);
    guest = startOfCluster(s, guest);
    let finish!: () => void;
    const done = new Promise<void>((r) => (finish = r));
    const m: Allocation = {
      offset: guest, hostOffset: host, nbClusters: nb, keepOldClusters: false,
      cowStart: { offset: 0, bytes: cowStart }, cowEnd: { offset: nb * s.clusterSize, bytes: 0 },
      // Otherwise the subcluster bitmap stays untouched: new subclusters stay unallocated, a partly used cluster keeps its bits (QEMU 7.2).
      prealloc: !fileZeroed, skipCow: false, done, finish,
    };
    await linkAllocations(s, [m]).catch((e) => {
      throw errnoError('Failed to update L2 tables', e);
    });
    guest += nb * s.clusterSize;
    host += nb * s.clusterSize;
    dataClusters -= nb;
  }
  return zeroWrite && !fileZeroed;
}
