/**
 * Persistent bitmaps between the image and memory, laid out as QEMU 7.2 lays them out: loaded
 * at open (and marked in use in the directory, rewritten in place, while the image is open
 * read-write), stored at close into newly allocated clusters (data clusters of each bitmap,
 * then its table, then a new directory) before the old ones are freed.
 */
import { BlkioError, errnoError, toBlkioError } from '../../errors.js';
import { DirtyBitmap } from '../../block/dirty-bitmap.js';
import { checkBitmapWritable, createBitmap, findBitmap } from '../../block/node-bitmaps.js';
import type { BlockNode } from '../../block/node.js';
import {
  ALL_ONES, BITMAP_FLAG_AUTO, BITMAP_FLAG_IN_USE, bitmapTableSize, checkBitmapConstraints, dirEntrySize,
  encodeBitmapDirectory, encodeBitmapTable, isValidDirEntry, loadBitmapDirectory, MAX_PHYS_SIZE, MAX_TABLE_SIZE, readBitmapTable, type BitmapDirectoryEntry,
} from './bitmaps.js';
import { AUTOCLEAR_BITMAPS, MAX_BITMAP_DIRECTORY_SIZE, MAX_BITMAPS } from './header.js';
import { updateHeader } from './open.js';
import { preventMetadataOverwrite } from './overlap.js';
import { allocClusters, freeOrReport } from './refcount.js';
import type { Qcow2State } from './state.js';


/** A directory entry with the bitmap in memory it is stored from. */
interface StoredBitmap extends BitmapDirectoryEntry {
  bitmap?: DirtyBitmap;
}

async function updateHeaderSync(s: Qcow2State): Promise<void> {
  await updateHeader(s);
  await s.file.flush();
}

async function flushCaches(s: Qcow2State): Promise<void> {
  await s.l2Cache.flush();
  await s.refcountCache.flush();
}

/** Read a consistent bitmap's bits from its table and data clusters. */
async function loadBitmapData(s: Qcow2State, entry: BitmapDirectoryEntry, bitmap: DirtyBitmap): Promise<void> {
  let table;
  try {
    table = await readBitmapTable(s, entry.tableOffset, entry.tableSize);
  } catch (e) {
    throw errnoError(`Could not read bitmap_table table from image for bitmap '${entry.name}'`, e);
  }
  const readFailed = (code: BlkioError['code']) =>
    new BlkioError(code, `Could not read bitmap '${entry.name}' from image: ${new BlkioError(code).strerror}`);
  if (table.length !== bitmapTableSize(bitmap.size, bitmap.granularity, s.clusterSize) || table.length > MAX_TABLE_SIZE) {
    throw readFailed('EINVAL');
  }
  const bitsPerCluster = s.clusterSize * 8;
  const cluster = new Uint8Array(s.clusterSize);
  for (let i = 0; i < table.length; i++) {
    const first = i * bitsPerCluster;
    const count = Math.min(bitmap.bitCount - first, bitsPerCluster);
    if (table[i] === ALL_ONES) {
      bitmap.setBits(first, first + count);
    } else if (table[i]) {
      try {
        await s.file.read(table[i], s.clusterSize, cluster);
      } catch (e) {
        throw readFailed(toBlkioError(e).code);
      }
      bitmap.deserialize(cluster, first, count);
    }
  }
}

/**
 * Load the image's bitmaps into the node (QEMU's qcow2_load_dirty_bitmaps): a bitmap marked in
 * use was not stored after its last change and is inconsistent; the others are marked in use
 * on disk while the image is writable, or kept read-only. `beforeWrite` readies the file for
 * that write during the open.
 */
export async function loadPersistentBitmaps(s: Qcow2State, node: BlockNode, beforeWrite: () => void): Promise<void> {
  const entries = await loadBitmapDirectory(s);
  const loaded: DirtyBitmap[] = [];
  try {
    let needsUpdate = false;
    for (const entry of entries) {
      const bitmap = createBitmap(node, entry.name, 2 ** entry.granularityBits, s.size);
      node.dirtyBitmaps.unshift(bitmap);
      loaded.push(bitmap);
      if (!(entry.flags & BITMAP_FLAG_IN_USE)) await loadBitmapData(s, entry, bitmap);
      bitmap.persistent = true;
      if (entry.flags & BITMAP_FLAG_IN_USE) {
        bitmap.inconsistent = true;
      } else {
        entry.flags |= BITMAP_FLAG_IN_USE;
        needsUpdate = true;
      }
      bitmap.enabled = (entry.flags & BITMAP_FLAG_AUTO) !== 0;
    }
    if (needsUpdate && !s.readOnly) {
      beforeWrite();
      await s.lock.run(() => updateDirectoryInPlace(s, entries)).catch((e: unknown) => {
        throw errnoError("Can't update bitmap directory", e);
      });
    }
  } catch (e) {
    for (const bitmap of loaded) node.dirtyBitmaps.splice(node.dirtyBitmaps.indexOf(bitmap), 1);
    throw e;
  }
  if (s.readOnly) for (const bitmap of loaded) bitmap.readonly = true;
}

/**
 * An image reopened read-write: its bitmaps, loaded read-only, become writable and are marked
 * in use on disk (QEMU's qcow2_reopen_bitmaps_rw, with its texts for what does not fit).
 */
export async function makeBitmapsWritable(s: Qcow2State, node: BlockNode): Promise<void> {
  const entries = await loadBitmapDirectory(s);
  const image = node.filename;
  const readonly: DirtyBitmap[] = [];
  let needsUpdate = false;
  for (const entry of entries) {
    const bitmap = findBitmap(node, entry.name);
    const corruption = (what: string) => new BlkioError('EINVAL', `Corruption: bitmap '${entry.name}' ${what}`);
    if (!bitmap) throw new BlkioError('EINVAL', `Unexpected bitmap '${entry.name}' in image '${image}'`);
    if (!(entry.flags & BITMAP_FLAG_IN_USE)) {
      if (!bitmap.readonly) throw corruption(`is not marked IN_USE in the image '${image}' and not marked readonly in RAM`);
      if (bitmap.inconsistent) throw corruption(`is inconsistent but is not marked IN_USE in the image '${image}'`);
      entry.flags |= BITMAP_FLAG_IN_USE;
      needsUpdate = true;
    } else if (bitmap.readonly && !bitmap.inconsistent) {
      throw corruption(`is marked IN_USE in the image '${image}' but it is readonly and consistent in RAM`);
    }
    if (bitmap.readonly) readonly.push(bitmap);
  }
  if (needsUpdate) {
    await s.lock.run(() => updateDirectoryInPlace(s, entries)).catch((e: unknown) => {
      throw errnoError('Cannot update bitmap directory', e);
    });
  }
  for (const bitmap of readonly) bitmap.readonly = false;
}

/**
 * Rewrite the directory where it is (same entries, new flags). The extension is switched off
 * meanwhile, so a crash in between leaves bitmaps known to be inconsistent, not wrong ones.
 */
async function updateDirectoryInPlace(s: Qcow2State, entries: readonly BitmapDirectoryEntry[]): Promise<void> {
  const location = s.bitmapDirectory!;
  const dir = encodeBitmapDirectory(entries);
  if (dir.length !== location.size) throw new BlkioError('EINVAL');
  s.header.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
  await updateHeaderSync(s);
  await preventMetadataOverwrite(s, location.offset, dir.length, 'bitmap directory');
  await s.file.write(location.offset, dir.length, dir);
  await updateHeaderSync(s);
  s.header.autoclearFeatures |= AUTOCLEAR_BITMAPS;
  await updateHeaderSync(s);
}

/**
 * Write a new directory for `entries` (none: the extension goes), point the header at it and
 * free the old one (QEMU's update_ext_header_and_dir).
 */
async function replaceDirectory(s: Qcow2State, entries: readonly BitmapDirectoryEntry[]): Promise<void> {
  const old = s.bitmapDirectory;
  if (entries.length) {
    if (entries.length > MAX_BITMAPS || entries.some((e) => !isValidDirEntry({ ...e, type: 1, extraDataSize: 0 }, s.size, s.clusterSize))) {
      throw new BlkioError('EINVAL');
    }
    const dir = encodeBitmapDirectory(entries);
    if (dir.length > MAX_BITMAP_DIRECTORY_SIZE) throw new BlkioError('EINVAL');
    const offset = await allocClusters(s, dir.length);
    try {
      await preventMetadataOverwrite(s, offset, dir.length);
      await s.file.write(offset, dir.length, dir);
      await flushCaches(s);
    } catch (e) {
      await freeOrReport(s, offset, dir.length, 'other');
      throw e;
    }
    s.header.autoclearFeatures |= AUTOCLEAR_BITMAPS;
    s.bitmapDirectory = { count: entries.length, offset, size: dir.length };
  } else {
    s.header.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
    s.bitmapDirectory = undefined;
  }
  await updateHeaderSync(s);
  if (old) await freeOrReport(s, old.offset, old.size, 'other');
}

/** Free a bitmap's data clusters and table (a table that cannot be read leaks). */
async function freeBitmapClusters(s: Qcow2State, tableOffset: number, tableSize: number): Promise<void> {
  let table;
  try {
    table = await readBitmapTable(s, tableOffset, tableSize);
  } catch {
    return;
  }
  for (const offset of table) if (offset > 0) await freeOrReport(s, offset, s.clusterSize, 'always');
  await freeOrReport(s, tableOffset, tableSize * 8, 'other');
}

/**
 * New clusters for a bitmap's data or table, checked against the metadata and written, each
 * step failing with QEMU's text for it.
 */
async function writeBitmapClusters(s: Qcow2State, name: string, data: Uint8Array, onAllocated: (offset: number) => void): Promise<void> {
  let offset;
  try {
    offset = await allocClusters(s, data.length);
  } catch (e) {
    throw errnoError(`Failed to allocate clusters for bitmap '${name}'`, e);
  }
  onAllocated(offset);
  try {
    await preventMetadataOverwrite(s, offset, data.length);
  } catch (e) {
    throw errnoError('Qcow2 overlap check failed', e);
  }
  try {
    await s.file.write(offset, data.length, data);
  } catch (e) {
    throw errnoError(`Failed to write bitmap '${name}' to file`, e);
  }
}

/** Write a bitmap's dirty clusters of data and then its table; the entry gets the table. */
async function storeBitmap(s: Qcow2State, entry: StoredBitmap, bitmap: DirtyBitmap): Promise<void> {
  const tableSize = bitmapTableSize(bitmap.size, bitmap.granularity, s.clusterSize);
  if (tableSize > MAX_TABLE_SIZE || tableSize * s.clusterSize > MAX_PHYS_SIZE) throw new BlkioError('EINVAL', `Bitmap '${bitmap.name}' is too big`);
  const table: number[] = new Array<number>(tableSize).fill(0);
  const bitsPerCluster = s.clusterSize * 8;
  let tableOffset = 0;
  try {
    // Only clusters of the bitmap with a dirty bit get data; clean ones stay 0 in the table.
    for (let bit = bitmap.nextSet(0); bit >= 0;) {
      const index = Math.floor(bit / bitsPerCluster);
      const first = index * bitsPerCluster;
      const count = Math.min(bitmap.bitCount - first, bitsPerCluster);
      const data = new Uint8Array(s.clusterSize);
      data.set(bitmap.serialize(first, count));
      await writeBitmapClusters(s, bitmap.name, data, (offset) => { table[index] = offset; });
      bit = first + count < bitmap.bitCount ? bitmap.nextSet(first + count) : -1;
    }
    await writeBitmapClusters(s, bitmap.name, encodeBitmapTable(table), (offset) => { tableOffset = offset; });
    entry.tableOffset = tableOffset;
    entry.tableSize = tableSize;
  } catch (e) {
    for (const offset of table) if (offset) await freeOrReport(s, offset, s.clusterSize, 'always');
    if (tableOffset) await freeOrReport(s, tableOffset, tableSize * 8, 'other');
    throw e;
  }
}

/**
 * Store the node's writable persistent bitmaps (QEMU's qcow2_store_persistent_dirty_bitmaps,
 * at close): each gets new clusters, then a new directory replaces the old one, then the old
 * tables of bitmaps that were loaded are freed. Inconsistent bitmaps stay as they are on disk.
 * The caller holds the lock.
 */
export async function storePersistentBitmaps(s: Qcow2State, node: BlockNode): Promise<void> {
  const entries: StoredBitmap[] = await loadBitmapDirectory(s);
  const oldTables: Array<{ offset: number; size: number }> = [];
  let count = s.bitmapDirectory?.count ?? 0;
  let dirSize = s.bitmapDirectory?.size ?? 0;
  let needWrite = false;
  for (const bitmap of node.dirtyBitmaps) {
    if (!bitmap.persistent || bitmap.inconsistent || bitmap.readonly) continue;
    needWrite = true;
    try {
      checkBitmapConstraints(bitmap.name, bitmap.granularity, s.size, s.clusterSize);
    } catch (e) {
      throw toBlkioError(e).prepend(`Bitmap '${bitmap.name}' doesn't satisfy the constraints: `);
    }
    let entry = entries.find((e) => e.name === bitmap.name);
    if (!entry) {
      if (++count > MAX_BITMAPS) throw new BlkioError('EINVAL', 'Too many persistent bitmaps');
      dirSize += dirEntrySize(bitmap.name);
      if (dirSize > MAX_BITMAP_DIRECTORY_SIZE) throw new BlkioError('EINVAL', 'Bitmap directory is too large');
      entry = { name: bitmap.name, tableOffset: 0, tableSize: 0, flags: 0, granularityBits: 0 };
      entries.push(entry);
    } else {
      if (!(entry.flags & BITMAP_FLAG_IN_USE)) throw new BlkioError('EEXIST', `Bitmap '${bitmap.name}' already exists in the image`);
      oldTables.push({ offset: entry.tableOffset, size: entry.tableSize });
      entry.tableOffset = 0;
      entry.tableSize = 0;
    }
    entry.flags = bitmap.enabled ? BITMAP_FLAG_AUTO : 0;
    entry.granularityBits = Math.log2(bitmap.granularity);
    entry.bitmap = bitmap;
  }
  if (!needWrite) return;
  if (s.readOnly) throw new BlkioError('EACCES', 'No write access');
  try {
    for (const entry of entries) if (entry.bitmap) await storeBitmap(s, entry, entry.bitmap);
    try {
      await replaceDirectory(s, entries);
    } catch (e) {
      throw errnoError('Failed to update bitmap extension', e);
    }
  } catch (e) {
    for (const entry of entries) if (entry.bitmap && entry.tableOffset) await freeBitmapClusters(s, entry.tableOffset, entry.tableSize);
    throw e;
  }
  // The directory no longer points at the old tables.
  for (const table of oldTables) await freeBitmapClusters(s, table.offset, table.size);
}

/** Drop a bitmap from the image: a new directory without it, then its clusters. */
export async function removePersistentBitmap(s: Qcow2State, name: string): Promise<void> {
  if (!s.bitmapDirectory) return;
  await s.lock.run(async () => {
    const entries = await loadBitmapDirectory(s).catch((e: unknown) => {
      throw new BlkioError('EIO', toBlkioError(e).message);
    });
    const index = entries.findIndex((e) => e.name === name);
    if (index < 0) return;
    const [removed] = entries.splice(index, 1);
    try {
      await replaceDirectory(s, entries);
    } catch (e) {
      throw errnoError('Failed to update bitmap extension', e);
    }
    await freeBitmapClusters(s, removed.tableOffset, removed.tableSize);
  });
}

/**
 * A resize changes the bitmaps in memory, which are stored at close: every bitmap of the image
 * must be loaded, writable and consistent (QEMU's qcow2_truncate_bitmaps_check).
 */
export async function requireResizableBitmaps(s: Qcow2State): Promise<void> {
  for (const entry of await loadBitmapDirectory(s)) {
    const bitmap = s.node && findBitmap(s.node, entry.name);
    if (!bitmap) throw new BlkioError('ENOTSUP', 'Cannot resize qcow2 with persistent bitmaps that were not loaded into memory');
    try {
      checkBitmapWritable(bitmap);
    } catch (e) {
      const err = toBlkioError(e);
      throw new BlkioError('ENOTSUP', err.message, err.hints);
    }
  }
}

/** Whether the image could store one more bitmap (QEMU's qcow2_co_can_store_new_dirty_bitmap). */
export function checkCanStoreBitmap(s: Qcow2State, node: BlockNode, name: string, granularity: number): void {
  if (findBitmap(node, name)) throw new BlkioError('EEXIST', `Bitmap already exists: ${name}`);
  const prefix = `Can't make bitmap '${name}' persistent in '${node.nodeName}': `;
  if (s.header.version < 3) throw new BlkioError('EINVAL', `${prefix}Cannot store dirty bitmaps in qcow2 v2 files`);
  try {
    checkBitmapConstraints(name, granularity, s.size, s.clusterSize);
  } catch (e) {
    throw toBlkioError(e).prepend(prefix);
  }
  const persistent = node.dirtyBitmaps.filter((b) => b.persistent);
  const dirSize = persistent.reduce((n, b) => n + dirEntrySize(b.name), dirEntrySize(name));
  if (persistent.length + 1 > MAX_BITMAPS) throw new BlkioError('EINVAL', `${prefix}Maximum number of persistent bitmaps is already reached`);
  if (dirSize > MAX_BITMAP_DIRECTORY_SIZE) throw new BlkioError('EINVAL', `${prefix}Not enough space in the bitmap directory`);
}
