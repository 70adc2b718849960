/**
 * Emptying an image (qemu-img commit without -d): v3 images without snapshots or bitmaps are
 * reset to the fresh layout (header, refcount table, one refcount block, zeroed L1 table);
 * others get every cluster discarded so reads fall through to the backing file.
 */
import { debugEvent } from '../../block/io.js';
import { makeTable, setReftableOffset } from './entries.js';
import { markClean } from './open.js';
import { allocClusters } from './refcount.js';
import { clusterDiscard } from './zero.js';
import { hasDataFile, markDirty, type Qcow2State } from './state.js';

export async function makeEmpty(s: Qcow2State): Promise<void> {
  const l1Clusters = Math.ceil(s.l1Size / (s.clusterSize / 8));
  // Resetting the image file would leave an external data file's clusters behind.
  const canReset = s.header.version >= 3 && s.snapshots.length === 0 && !s.bitmapDirectory &&
    3 + l1Clusters <= s.refcountBlockSize && !hasDataFile(s);
  await s.lock.run(async () => {
    if (canReset) {
      await resetImage(s, l1Clusters);
      return;
    }
    const step = Math.floor(0x7fffffff / s.clusterSize) * s.clusterSize;
    for (let offset = 0; offset < s.size; offset += step) {
      await clusterDiscard(s, offset, Math.min(step, s.size - offset), 'snapshot', true);
    }
  });
}

async function resetImage(s: Qcow2State, l1Clusters: number): Promise<void> {
  await s.l2Cache.empty();
  await s.refcountCache.empty();
  // The refcounts are about to be wrong until the end.
  await markDirty(s);
  const file = s.file;
  debugEvent(file.node, 'l1_update');
  await file.writeZeroes(s.l1TableOffset, l1Clusters * s.clusterSize);
  s.l1Table.data.fill(0);
  debugEvent(file.node, 'empty_image_prepare');
  await file.writeZeroes(s.clusterSize, (2 + l1Clusters) * s.clusterSize);

  debugEvent(file.node, 'l1_update');
  debugEvent(file.node, 'reftable_update');
  const pointers = new Uint8Array(20);
  const view = new DataView(pointers.buffer);
  view.setBigUint64(0, BigInt(3 * s.clusterSize));
  view.setBigUint64(8, BigInt(s.clusterSize));
  view.setUint32(16, 1);
  await file.write(40, 20, pointers);
  await file.flush();
  s.l1TableOffset = 3 * s.clusterSize;
  s.refcountTableOffset = s.clusterSize;
  s.refcountTableSize = s.clusterSize / 8;
  s.refcountTable = makeTable(new Uint8Array(s.clusterSize));
  s.maxRefcountTableIndex = 0;
  Object.assign(s.header, { l1TableOffset: s.l1TableOffset, refcountTableOffset: s.clusterSize, refcountTableClusters: 1 });

  debugEvent(file.node, 'refblock_alloc');
  const entry = makeTable(new Uint8Array(8));
  setReftableOffset(entry, 0, 2 * s.clusterSize);
  await file.write(s.clusterSize, 8, entry.data);
  await file.flush();
  setReftableOffset(s.refcountTable, 0, 2 * s.clusterSize);
  s.freeClusterIndex = 0;
  await allocClusters(s, 3 * s.clusterSize + s.l1Size * 8);
  await markClean(s);
  await file.truncate((3 + l1Clusters) * s.clusterSize, false);
}
