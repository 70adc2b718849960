/**
 * Zero writes and discards as L2 updates: zero clusters (v3), zero subclusters (extended L2),
 * plain deallocation (v2 without backing, discard), and the refcount decrease that follows the
 * L2 update of every cluster given up.
 */
import { BlkioError, errno } from '../../errors.js';
import { chainNext, nodeBlockStatus } from '../../block/io.js';
import type { BlockNode } from '../../block/node.js';
import { REQ_MAY_UNMAP, REQ_NO_FALLBACK, STATUS_ALLOCATED, STATUS_ZERO } from '../../block/flags.js';
import { LO_ZERO } from './entries.js';
import {
  ALL_ONES, ClusterType, SubclusterType, clusterType, getClusterTable, getHostOffset, isAllocatedType, rangeMask,
  readL2, sameEntry, scIndex, writeL2, type L2Entry,
} from './mapping.js';
import { freeAnyCluster, processDiscards } from './refcount.js';
import { writeGuest } from './write.js';
import { dataFileIsRaw, offsetIntoCluster, type DiscardType, type Qcow2State } from './state.js';

/** Run `fn` over each L2 slice the cluster range touches. */
async function forEachSlice(
  s: Qcow2State, offset: number, nbClusters: number,
  fn: (offset: number, nbClusters: number) => Promise<number>,
): Promise<void> {
  while (nbClusters > 0) {
    const cleared = await fn(offset, nbClusters);
    nbClusters -= cleared;
    offset += cleared * s.clusterSize;
  }
}

/** Batch the discards of freed clusters until `fn` is done; they are dropped if it fails. */
async function withCachedDiscards(s: Qcow2State, fn: () => Promise<void>): Promise<void> {
  s.cacheDiscards = true;
  let succeeded = false;
  try {
    await fn();
    succeeded = true;
  } finally {
    s.cacheDiscards = false;
    await processDiscards(s, succeeded);
  }
}

/**
 * Discard whole clusters (the last may end at the image end). With `fullDiscard` they fall
 * through to the backing file; otherwise they read as zeroes where that is possible.
 */
export async function clusterDiscard(s: Qcow2State, offset: number, bytes: number, type: DiscardType, fullDiscard: boolean): Promise<void> {
  await withCachedDiscards(s, () =>
    forEachSlice(s, offset, Math.ceil(bytes / s.clusterSize), (pos, nb) => discardInSlice(s, pos, nb, type, fullDiscard)));
}

/** What a rewrite makes of an L2 entry, and whether the old entry's host cluster is given up when it changes. */
interface Rewritten {
  entry: L2Entry;
  givesUp: boolean;
}

/**
 * Rewrite the L2 entries of the clusters from `offset` in its slice (at most `nbClusters`) to
 * what `rewrite` makes of each; the host clusters of changed entries it gives up are freed (as
 * `type`) once the slice is done. Returns how many clusters the slice held.
 */
async function rewriteInSlice(
  s: Qcow2State, offset: number, nbClusters: number, type: DiscardType, rewrite: (old: L2Entry) => Rewritten,
): Promise<number> {
  const { slice, index } = await getClusterTable(s, offset);
  const freed: L2Entry[] = [];
  try {
    nbClusters = Math.min(nbClusters, s.l2SliceSize - index);
    for (let i = 0; i < nbClusters; i++) {
      const old = readL2(s, slice, index + i);
      const { entry, givesUp } = rewrite(old);
      if (sameEntry(old, entry)) continue;
      s.l2Cache.markDirty(slice);
      writeL2(s, slice, index + i, entry);
      if (givesUp) freed.push(old);
    }
  } finally {
    s.l2Cache.put(slice);
  }
  for (const old of freed) await freeAnyCluster(s, old.hi, old.lo, type);
  return nbClusters;
}

function discardInSlice(s: Qcow2State, offset: number, nbClusters: number, type: DiscardType, fullDiscard: boolean): Promise<number> {
  const discarded = (old: L2Entry): L2Entry => {
    if (fullDiscard) return { hi: 0, lo: 0, zero: 0, alloc: 0 };
    if (!s.node?.backing && !isAllocatedType(clusterType(s, old))) return old;
    return s.extendedL2
      ? { hi: 0, lo: 0, zero: ALL_ONES, alloc: 0 }
      : { hi: 0, lo: s.header.version >= 3 ? LO_ZERO : 0, zero: 0, alloc: 0 };
  };
  return rewriteInSlice(s, offset, nbClusters, type, (old) => ({ entry: discarded(old), givesUp: true }));
}

/** Mark whole clusters as zero; with MAY_UNMAP (or for compressed clusters) give up their host clusters. */
function zeroInSlice(s: Qcow2State, offset: number, nbClusters: number, flags: number): Promise<number> {
  const zeroed = (old: L2Entry): Rewritten => {
    const type = clusterType(s, old);
    const unmaps = type === ClusterType.Compressed || ((flags & REQ_MAY_UNMAP) !== 0 && isAllocatedType(type));
    const entry: L2Entry = unmaps ? { hi: 0, lo: 0, zero: old.zero, alloc: old.alloc } : { ...old };
    if (s.extendedL2) {
      entry.zero = ALL_ONES;
      entry.alloc = 0;
    } else {
      entry.lo |= LO_ZERO;
    }
    return { entry, givesUp: unmaps };
  };
  return rewriteInSlice(s, offset, nbClusters, 'request', zeroed);
}

/** Mark `count` subclusters from the one at `offset` as zero (extended L2, partial cluster). */
async function zeroSubclusters(s: Qcow2State, offset: number, count: number): Promise<void> {
  const sc = scIndex(s, offset);
  const { slice, index } = await getClusterTable(s, offset);
  try {
    const old = readL2(s, slice, index);
    if (clusterType(s, old) === ClusterType.Compressed) throw errno('ENOTSUP');
    const range = rangeMask(sc, sc + count);
    const entry = { ...old, zero: (old.zero | range) >>> 0, alloc: (old.alloc & ~range) >>> 0 };
    if (!sameEntry(old, entry)) {
      writeL2(s, slice, index, entry);
      s.l2Cache.markDirty(slice);
    }
  } finally {
    s.l2Cache.put(slice);
  }
}

/**
 * Make `[offset, offset + bytes)` (subcluster aligned, or ending at the image end) read as
 * zeroes through metadata alone (lock held). v2 can only deallocate, and only without backing.
 */
export async function subclusterZeroize(s: Qcow2State, offset: number, bytes: number, flags: number): Promise<void> {
  // A raw data file must read as the guest disk does: it is zeroed too.
  if (dataFileIsRaw(s)) await s.dataFile.writeZeroes(offset, bytes, flags);
  let end = offset + bytes;
  if (s.header.version < 3) {
    if (!s.node?.backing) return clusterDiscard(s, offset, bytes, 'request', false);
    throw errno('ENOTSUP');
  }
  const head = Math.min(end, Math.ceil(offset / s.clusterSize) * s.clusterSize) - offset;
  offset += head;
  const tail = end >= s.size ? 0 : end - Math.max(offset, end - offsetIntoCluster(s, end));
  end -= tail;
  await withCachedDiscards(s, async () => {
    if (head) await zeroSubclusters(s, offset - head, Math.ceil(head / s.subclusterSize));
    await forEachSlice(s, offset, Math.ceil((end - offset) / s.clusterSize), (pos, nb) => zeroInSlice(s, pos, nb, flags));
    if (tail) await zeroSubclusters(s, end, Math.ceil(tail / s.subclusterSize));
  });
}

/** Whether the whole range reads as zeroes through the backing chain (QEMU's is_zero). */
export async function readsAsZero(node: BlockNode, offset: number, bytes: number): Promise<boolean> {
  bytes = Math.min(bytes, Math.max(0, node.getLength() - offset));
  while (bytes > 0) {
    const { status, pnum } = await statusAbove(node, offset, bytes, true);
    if (!(status & STATUS_ZERO) || pnum === 0) return false;
    offset += pnum;
    bytes -= pnum;
  }
  return true;
}

/**
 * QEMU's bdrv_co_is_zero_fast: one quick block-status query (no look at host files) has to
 * answer zero for the whole range. A range reaching past the end of the image (a COW region
 * of the last cluster, VM state) has no such answer, so it is copied.
 */
export async function readsAsZeroFast(node: BlockNode, offset: number, bytes: number): Promise<boolean> {
  if (bytes === 0) return true;
  const { status, pnum } = await statusAbove(node, offset, bytes, false);
  return pnum === bytes && (status & STATUS_ZERO) !== 0;
}

/** Block status of the first layer of the chain that has the range, or of the bottom. */
async function statusAbove(node: BlockNode, offset: number, bytes: number, wantZero: boolean): Promise<{ status: number; pnum: number }> {
  let r = await nodeBlockStatus(node, offset, bytes, wantZero);
  if (r.pnum === 0 || r.status & STATUS_ALLOCATED) return r;
  let pnum = r.pnum;
  for (let p = chainNext(node); p; p = chainNext(p)) {
    const q = await nodeBlockStatus(p, offset, pnum, wantZero);
    if (q.pnum === 0) return { status: STATUS_ZERO | STATUS_ALLOCATED, pnum };
    if (q.status & STATUS_ALLOCATED) return { status: q.status, pnum: Math.min(pnum, q.pnum) };
    r = q;
    pnum = Math.min(pnum, q.pnum);
  }
  return { status: r.status, pnum };
}

/**
 * One zero-write piece as QEMU's qcow2_co_pwrite_zeroes gets it: a part of a subcluster is
 * only handled when the rest of it reads as zero and it is not allocated data.
 */
async function zeroPiece(s: Qcow2State, node: BlockNode, offset: number, bytes: number, flags: number): Promise<void> {
  const head = offset % s.subclusterSize;
  let tail = (Math.ceil((offset + bytes) / s.subclusterSize) * s.subclusterSize) - (offset + bytes);
  if (offset + bytes === s.size) tail = 0;
  if (head || tail) {
    if (!(await readsAsZero(node, offset - head, head)) || !(await readsAsZero(node, offset + bytes, tail))) {
      throw errno('ENOTSUP');
    }
    await s.lock.run(async () => {
      const start = offset - head;
      const m = await getHostOffset(s, start, s.subclusterSize);
      if (m.type !== SubclusterType.UnallocatedPlain && m.type !== SubclusterType.UnallocatedAlloc &&
          m.type !== SubclusterType.ZeroPlain && m.type !== SubclusterType.ZeroAlloc) {
        throw errno('ENOTSUP');
      }
      await subclusterZeroize(s, start, s.subclusterSize, flags);
    });
    return;
  }
  await s.lock.run(() => subclusterZeroize(s, offset, bytes, flags));
}

/**
 * A zero write split the way the generic block layer splits it for qcow2's zero alignment
 * (the subcluster): unaligned head, aligned bulk, unaligned tail. A piece metadata cannot
 * express is written as a zero buffer, unless NO_FALLBACK.
 */
export async function writeZeroesGuest(s: Qcow2State, node: BlockNode, offset: number, bytes: number, flags: number): Promise<void> {
  const align = s.subclusterSize;
  let head = offset % align;
  const tail = (offset + bytes) % align;
  while (bytes > 0) {
    let n = bytes;
    if (head) {
      n = Math.min(bytes, align - head);
      head = (head + n) % align;
    } else if (tail && n > align) {
      n -= tail;
    }
    try {
      await zeroPiece(s, node, offset, n, flags);
    } catch (e) {
      if (!(e instanceof BlkioError) || e.code !== 'ENOTSUP' || flags & REQ_NO_FALLBACK) throw e;
      await writeGuest(s, offset, n, new Uint8Array(n));
    }
    offset += n;
    bytes -= n;
  }
}

/** Guest discard: whole clusters only (or the partial cluster at the image end). */
export async function discardGuest(s: Qcow2State, offset: number, bytes: number): Promise<void> {
  // Without zero clusters, v2 would expose the backing file's data: nothing is discarded.
  if (s.header.version < 3 && s.node?.backing) return;
  if ((offset % s.clusterSize || bytes % s.clusterSize) && (offset % s.clusterSize || offset + bytes !== s.size)) return;
  await s.lock.run(() => clusterDiscard(s, offset, bytes, 'request', false));
}
