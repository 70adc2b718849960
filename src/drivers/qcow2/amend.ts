/**
 * `qemu-img amend` for qcow2: change the compatibility level (upgrade first, downgrade last so
 * that features v2 cannot hold are gone by then), the refcount width (rewriting all refcount
 * structures), lazy refcounts and the virtual size, in QEMU 7.2's order with its texts, so the
 * image comes out as qemu-img's does.
 */
import { BlkioError } from '../../errors.js';
import type { CreateOptionSpec, CreateRequest } from '../../block/driver.js';
import type { BlockNode } from '../../block/node.js';
import { LUKS_AMEND_OPTIONS } from '../../crypto/luks.js';
import {
  entryOffset, getHi, getLo, getRefcount, HI_COPIED, makeTable, refcountMax, reftableOffset, setRefcount, setReftableOffset, splitOffset,
  type Table,
} from './entries.js';
import { checkRefcountWidth, QCOW2_CREATE_OPTIONS, VERSIONS } from './create.js';
import { amendEncryption } from './encryption.js';
import {
  AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, COMPRESSION_ZLIB, HEADER_SIZE_V3, INCOMPAT_COMPRESSION, INCOMPAT_DIRTY,
} from './header.js';
import { ClusterType, clusterType, getHostOffset, l2Offset, readL2, SubclusterType, writeL2 } from './mapping.js';
import { markClean, updateHeader } from './open.js';
import {
  adjustRefcount, allocClusters, freeClusters, getClusterRefcount, MAX_REFTABLE_SIZE, updateMaxRefcountTableIndex,
} from './refcount.js';
import { readSnapshotL1, SNAPSHOT_SIZES_EXTRA_SIZE, validateSnapshotL1, writeSnapshotTable } from './snapshots.js';
import { dataFileIsRaw, hasDataFile, hex, offsetIntoCluster, signalCorruption, type Qcow2State } from './state.js';
import { truncateImage } from './truncate.js';

/** The create options amend can change too (their creation defaults go unused here). */
const AMENDABLE_CREATE_OPTIONS = [
  'size', 'compat', 'backing_file', 'backing_fmt', 'data_file', 'data_file_raw', 'lazy_refcounts', 'refcount_bits',
];

/** In QEMU's order (`-o help` sorts them). */
export const QCOW2_AMEND_OPTIONS: readonly CreateOptionSpec[] = [
  ...LUKS_AMEND_OPTIONS.map((spec) => ({ ...spec, name: `encrypt.${spec.name}` })),
  ...QCOW2_CREATE_OPTIONS.filter((spec) => AMENDABLE_CREATE_OPTIONS.includes(spec.name)),
];

type Report = (done: number, total: number) => void;

/**
 * Progress over several steps (upgrade, refcount change, downgrade): each reports its own
 * done/total; the whole is projected from the steps seen so far.
 */
function stepProgress(report: Report, steps: number) {
  let completed = 0;
  let completedWork = 0;
  let lastWork = 0;
  let current = -1;
  return (step: number): Report => (done, total) => {
    if (step !== current) {
      if (current !== -1) {
        completedWork += lastWork;
        completed++;
      }
      current = step;
    }
    lastWork = total;
    const work = completedWork + total;
    report(completedWork + done, work + Math.floor((work * (steps - completed - 1)) / (completed + 1)));
  };
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

export async function amendImage(
  node: BlockNode<Qcow2State>, o: CreateRequest['options'], force: boolean, report: Report,
): Promise<void> {
  const s = node.state;
  const oldVersion = s.header.version;
  let newVersion = oldVersion;
  const compat = o.compat as string | undefined;
  if (compat !== undefined) {
    if (!(compat in VERSIONS)) throw invalid(`Unknown compatibility level ${compat}`);
    newVersion = VERSIONS[compat];
  }
  if (Object.keys(o).some((name) => name.startsWith('encrypt.'))) {
    await amendEncryption(s, o, force, (id) => node.layer.objects.get(id));
  }
  const lazyRefcounts = (o.lazy_refcounts as boolean | undefined) ?? s.lazyRefcounts;
  const refcountBits = (o.refcount_bits as number | undefined) ?? 2 ** s.refcountOrder;
  checkRefcountWidth(refcountBits);
  const dataFile = o.data_file as string | undefined;
  if (dataFile !== undefined && !hasDataFile(s)) throw invalid('data-file can only be set for images that use an external data file');
  const dataFileRaw = (o.data_file_raw as boolean | undefined) ?? dataFileIsRaw(s);
  if (dataFileRaw && !dataFileIsRaw(s)) throw invalid('data-file-raw cannot be set on existing images');
  const newOrder = Math.log2(refcountBits);

  const progress = stepProgress(report, Number(newVersion !== oldVersion) + Number(newOrder !== s.refcountOrder));
  if (newVersion > oldVersion) await upgrade(s, progress(0));
  if (newOrder !== s.refcountOrder) {
    if (newVersion < 3 && refcountBits !== 16) {
      throw invalid('Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
    }
    await changeRefcountOrder(s, newOrder, progress(1));
  }
  // An empty name removes it: the data file must then be given when the image is opened.
  if (dataFile !== undefined) s.dataFileName = dataFile || undefined;
  if (!dataFileRaw) s.header.autoclearFeatures &= ~AUTOCLEAR_DATA_FILE_RAW;
  await updateHeader(s).catch((e) => {
    throw prefixed(e, 'Failed to update the image header');
  });
  // Naming the backing file the image already has (name and format alike) is no change.
  const backingFile = o.backing_file as string | undefined;
  const backingFormat = o.backing_fmt as string | undefined;
  if ((backingFile !== undefined || backingFormat !== undefined)
    && (backingFile !== s.backingFile || backingFormat !== s.backingFormat)) {
    throw new BlkioError('EINVAL', 'Cannot amend the backing file', ["You can use 'qemu-img rebase' instead."]);
  }
  if (s.lazyRefcounts !== lazyRefcounts) await setLazyRefcounts(s, lazyRefcounts, newVersion);
  const size = o.size as number | undefined;
  if (size) await truncateImage(s, size, 'off');
  if (newVersion < oldVersion) await downgrade(node, progress(2));
}

function prefixed(e: unknown, message: string): unknown {
  return e instanceof BlkioError ? e.prepend(`${message}: `) : e;
}

async function setLazyRefcounts(s: Qcow2State, on: boolean, version: number): Promise<void> {
  if (on) {
    if (version < 3) {
      throw invalid('Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)');
    }
    s.header.compatibleFeatures |= COMPAT_LAZY_REFCOUNTS;
  } else {
    // The refcounts must be right before anyone may rely on them again.
    await markClean(s).catch((e) => {
      throw prefixed(e, 'Failed to make the image clean');
    });
    s.header.compatibleFeatures &= ~COMPAT_LAZY_REFCOUNTS;
  }
  await updateHeader(s).catch((e) => {
    throw prefixed(e, 'Failed to update the image header');
  });
  s.lazyRefcounts = on;
}

async function upgrade(s: Qcow2State, report: Report): Promise<void> {
  report(0, 2);
  // v3 needs each snapshot's 64-bit VM state size and disk size; the table is rewritten with them.
  if (s.snapshots.some((sn) => sn.extraDataSize < SNAPSHOT_SIZES_EXTRA_SIZE)) {
    await writeSnapshotTable(s, s.snapshots).catch((e) => {
      throw prefixed(e, 'Failed to update the snapshot table');
    });
  }
  report(1, 2);
  s.header.version = 3;
  s.header.headerLength = HEADER_SIZE_V3;
  await updateHeader(s).catch((e) => {
    throw prefixed(e, 'Failed to update the image header');
  });
  report(2, 2);
}

async function downgrade(node: BlockNode<Qcow2State>, report: Report): Promise<void> {
  const s = node.state;
  if (s.refcountOrder !== 4) throw new BlkioError('ENOTSUP', 'compat=0.10 requires refcount_bits=16');
  if (hasDataFile(s)) throw new BlkioError('ENOTSUP', 'Cannot downgrade an image with a data file');
  // v2 programs may not know that a snapshot's extra sizes matter.
  if (s.snapshots.some((sn) => sn.vmStateSize > 0xffffffffn || sn.diskSize !== BigInt(s.size))) {
    throw new BlkioError('ENOTSUP', 'Internal snapshots prevent downgrade of image');
  }
  if (s.header.incompatibleFeatures & INCOMPAT_DIRTY) {
    await markClean(s).catch((e) => {
      throw prefixed(e, 'Failed to make the image clean');
    });
  }
  // QEMU 7.2 lets the compression type bit pass (v2 headers have no such field).
  const incompatible = s.header.incompatibleFeatures & ~INCOMPAT_COMPRESSION;
  if (incompatible) {
    throw new BlkioError('ENOTSUP', `Cannot downgrade an image with incompatible features 0x${incompatible.toString(16)} set`);
  }
  s.header.compatibleFeatures = 0n;
  s.header.autoclearFeatures = 0n;
  s.lazyRefcounts = false;
  await expandZeroClusters(s, node.backing !== undefined, report).catch((e) => {
    throw prefixed(e, 'Failed to turn zero into data clusters');
  });
  if (s.header.incompatibleFeatures & INCOMPAT_COMPRESSION) {
    const compressed = await hasCompressedClusters(s).catch(() => {
      throw new BlkioError('EINVAL', 'Failed to check block status');
    });
    if (compressed) {
      throw new BlkioError('ENOTSUP', 'Cannot downgrade an image with zstd compression type and existing compressed clusters');
    }
    // No compressed clusters: the type is free to become v2's zlib.
    s.header.incompatibleFeatures &= ~INCOMPAT_COMPRESSION;
    s.header.compressionType = COMPRESSION_ZLIB;
  }
  s.header.version = 2;
  await updateHeader(s).catch((e) => {
    throw prefixed(e, 'Failed to update the image header');
  });
}

/**
 * v2 has no zero clusters: without a backing file they simply become unallocated; with one (or
 * when the cluster is allocated already) they become data clusters full of zeroes. The active
 * table goes first, then each snapshot's, all counted in one progress.
 */
async function expandZeroClusters(s: Qcow2State, hasBacking: boolean, report: Report): Promise<void> {
  const total = s.snapshots.reduce((sum, sn) => sum + sn.l1Size, s.l1Size);
  let visited = 0;
  const visit = () => report(++visited, total);
  await expandZeroClustersInL1(s, s.l1Table, s.l1Size, hasBacking, visit);
  // Snapshot tables may share L2 tables with the active one: those are expanded already.
  await s.l2Cache.empty();
  for (const sn of s.snapshots) {
    validateSnapshotL1(s, sn);
    await expandZeroClustersInL1(s, await readSnapshotL1(s, sn), sn.l1Size, hasBacking, visit);
    await s.l2Cache.empty();
  }
}

/**
 * Whether the guest range maps a compressed cluster (zstd ones forbid the downgrade). As in
 * QEMU, entries of the active table past the guest size do not count.
 */
async function hasCompressedClusters(s: Qcow2State): Promise<boolean> {
  for (let offset = 0; offset < s.size;) {
    const m = await getHostOffset(s, offset, s.size - offset);
    if (m.type === SubclusterType.Compressed) return true;
    offset += m.bytes;
  }
  return false;
}

/** expandZeroClusters for one L1 table. */
async function expandZeroClustersInL1(
  s: Qcow2State, l1: Table, l1Size: number, hasBacking: boolean, visit: () => void,
): Promise<void> {
  const slicesPerTable = s.l2Size / s.l2SliceSize;
  const sliceBytes = s.l2SliceSize * s.l2EntrySize;
  for (let i = 0; i < l1Size; i++) {
    const tableOffset = entryOffset(getHi(l1, i), getLo(l1, i));
    if (tableOffset) {
      if (offsetIntoCluster(s, tableOffset)) {
        throw await signalCorruption(s, true, `L2 table offset ${hex(tableOffset)} unaligned (L1 index: ${hex(i)})`);
      }
      const tableRefcount = await getClusterRefcount(s, tableOffset / s.clusterSize);
      for (let slice = 0; slice < slicesPerTable; slice++) {
        const table = await s.l2Cache.get(tableOffset + slice * sliceBytes);
        try {
          for (let j = 0; j < s.l2SliceSize; j++) {
            const entry = readL2(s, table, j);
            const type = clusterType(s, entry);
            if (type !== ClusterType.ZeroPlain && type !== ClusterType.ZeroAlloc) continue;
            let offset = l2Offset(entry);
            if (type === ClusterType.ZeroPlain && !hasBacking) {
              writeL2(s, table, j, { hi: 0, lo: 0, zero: 0, alloc: 0 });
              s.l2Cache.markDirty(table);
              continue;
            }
            // A preallocated cluster that other tables (a snapshot's) reference as well keeps
            // its data for them: zeroes go to a cluster of this table's own. (QEMU 7.2 zeroes
            // the shared cluster, changing what the snapshot reads.)
            const shared = type === ClusterType.ZeroAlloc
              && await getClusterRefcount(s, offset / s.clusterSize) > tableRefcount;
            if (type === ClusterType.ZeroPlain || shared) {
              const oldOffset = offset;
              offset = await allocClusters(s, s.clusterSize);
              // A shared L2 table: every sharer references the new cluster.
              if (tableRefcount > 1) await adjustRefcount(s, offset, tableRefcount - 1, false);
              if (shared) await adjustRefcount(s, oldOffset, tableRefcount, true);
            }
            await s.file.writeZeroes(offset, s.clusterSize, 0);
            const [hi, lo] = splitOffset(offset);
            writeL2(s, table, j, { hi: tableRefcount === 1 ? (hi | HI_COPIED) >>> 0 : hi, lo, zero: 0, alloc: 0 });
            s.l2Cache.markDirty(table);
            s.l2Cache.dependOnFlush();
          }
        } finally {
          s.l2Cache.put(table);
        }
      }
    }
    visit();
  }
}

/** The new refcount table being built: block offsets by index. */
interface NewReftable {
  entries: number[];
  /** Entries the table has room for (a multiple of a cluster's worth). */
  size: number;
  index: number;
}

/** What happens to each new refcount block once the walk has filled it. */
type BlockDone = (t: NewReftable, block: Uint8Array | undefined, empty: boolean) => Promise<void>;

/**
 * Walk all refcounts in the current width, packing them into blocks of the new width; each
 * full block goes to `done`. With `block`, the refcounts are written into it as well.
 */
async function walkRefcounts(
  s: Qcow2State, t: NewReftable, newOrder: number, block: Uint8Array | undefined, done: BlockDone,
  report: Report, walk: number, walks: number,
): Promise<void> {
  const newBlockSize = 2 ** (s.clusterBits - (newOrder - 3));
  const newBits = 2 ** newOrder;
  const target = block && makeTable(block);
  let filled = 0;
  let empty = true;
  for (let ti = 0; ti < s.refcountTableSize; ti++) {
    report(walk * s.refcountTableSize + ti, walks * s.refcountTableSize);
    const blockOffset = reftableOffset(s.refcountTable, ti);
    if (offsetIntoCluster(s, blockOffset)) {
      await signalCorruption(s, true, `Refblock offset ${hex(blockOffset)} unaligned (reftable index: ${hex(ti)})`);
      throw new BlkioError('EIO', 'Image is corrupt (unaligned refblock offset)');
    }
    const finishBlock = async (): Promise<void> => {
      await done(t, block, empty);
      t.index++;
      filled = 0;
      empty = true;
    };
    if (!blockOffset) {
      // No block: all zero. Block sizes are powers of two of at least 64 entries, so whole bytes.
      for (let left = s.refcountBlockSize; left > 0;) {
        if (filled >= newBlockSize) await finishBlock();
        const n = Math.min(left, newBlockSize - filled);
        block?.fill(0, (filled * newBits) / 8, ((filled + n) * newBits) / 8);
        filled += n;
        left -= n;
      }
      continue;
    }
    const old = await s.refcountCache.get(blockOffset);
    try {
      for (let bi = 0; bi < s.refcountBlockSize; bi++) {
        if (filled >= newBlockSize) await finishBlock();
        const refcount = getRefcount(old, s.refcountOrder, bi);
        if (newBits < 64 && refcount >= 2 ** newBits) {
          const offset = (ti * s.refcountBlockSize + bi) * s.clusterSize;
          throw invalid(`Cannot decrease refcount entry width to ${newBits} bits: Cluster at offset ${hex(offset)} has a refcount of ${refcount}`);
        }
        if (target) setRefcount(target, newOrder, filled, refcount);
        filled++;
        empty &&= refcount === 0;
      }
    } finally {
      s.refcountCache.put(old);
    }
  }
  if (filled > 0) {
    block?.fill(0, (filled * newBits) / 8);
    await done(t, block, empty);
    t.index++;
  }
  report((walk + 1) * s.refcountTableSize, walks * s.refcountTableSize);
}

/**
 * Rewrite the refcount structures with entries of 2^newOrder bits: allocate new blocks and a
 * new table (allocating changes refcounts, so walk again until nothing new was needed), write
 * them, switch the header over, then free the old structures.
 */
async function changeRefcountOrder(s: Qcow2State, newOrder: number, report: Report): Promise<void> {
  const t: NewReftable = { entries: [], size: 0, index: 0 };
  let tableOffset = 0;
  let allocatedTableSize = 0;
  let walk = 0;
  let allocated: boolean;
  const allocateBlock: BlockDone = async (table, _block, empty) => {
    if (empty) return;
    if (table.index >= table.size) {
      const entriesPerCluster = s.clusterSize / 8;
      table.size = Math.ceil((table.index + 1) / entriesPerCluster) * entriesPerCluster;
      if (table.size > MAX_REFTABLE_SIZE / 8) {
        throw new BlkioError('ENOTSUP', 'This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting');
      }
    }
    if (!table.entries[table.index]) {
      table.entries[table.index] = await allocClusters(s, s.clusterSize).catch((e) => {
        throw prefixed(e, 'Failed to allocate refblock');
      });
      allocated = true;
    }
  };
  do {
    allocated = false;
    const walks = Math.max(walk + 2, 3);
    await walkRefcounts(s, t, newOrder, undefined, allocateBlock, report, walk++, walks);
    t.index = 0;
    if (allocated) {
      if (tableOffset) await freeClusters(s, tableOffset, allocatedTableSize * 8, 'never');
      tableOffset = await allocClusters(s, t.size * 8).catch((e) => {
        throw prefixed(e, 'Failed to allocate the new reftable');
      });
      allocatedTableSize = t.size;
    }
  } while (allocated);

  const writeBlock: BlockDone = async (table, block, empty) => {
    const offset = table.index < table.size ? table.entries[table.index] : 0;
    if (offset) await s.file.write(offset, s.clusterSize, block!);
    else if (!empty) throw new BlkioError('EIO', 'Failed to write refblock');
  };
  await walkRefcounts(s, t, newOrder, new Uint8Array(s.clusterSize), writeBlock, report, walk, walk + 1);

  const newTable = makeTable(new Uint8Array(t.size * 8));
  t.entries.forEach((offset, i) => setReftableOffset(newTable, i, offset ?? 0));
  await s.file.write(tableOffset, t.size * 8, newTable.data);
  await s.refcountCache.flush();

  const old = { table: s.refcountTable, size: s.refcountTableSize, offset: s.refcountTableOffset };
  s.refcountOrder = newOrder;
  s.header.refcountOrder = newOrder;
  s.refcountTableSize = t.size;
  s.refcountTableOffset = tableOffset;
  s.header.refcountTableOffset = tableOffset;
  s.header.refcountTableClusters = (t.size * 8) / s.clusterSize;
  await updateHeader(s).catch((e) => {
    throw prefixed(e, 'Failed to update the qcow2 header');
  });
  s.refcountTable = newTable;
  updateMaxRefcountTableIndex(s);
  s.refcountMax = refcountMax(newOrder);
  s.refcountBlockBits = s.clusterBits - (newOrder - 3);
  s.refcountBlockSize = 2 ** s.refcountBlockBits;

  // The old blocks and table are ordinary clusters in the new structures now.
  for (let i = 0; i < old.size; i++) {
    const offset = reftableOffset(old.table, i);
    if (offset) await freeClusters(s, offset, s.clusterSize, 'other');
  }
  await freeClusters(s, old.offset, old.size * 8, 'other');
}
