/**
 * Mirror: copy a source node to a target while writes keep arriving. A `mirror_top` filter
 * above the source sends every write to both sides; the job copies what the sync mode asks
 * for, several chunks in flight, each under the filter's range lock. Commit is the same copy
 * with the base as target (see commit.ts).
 *
 *   sync=full  everything the source shows (the target is new and reads as zeroes: holes are skipped)
 *   sync=top   only what the source's top layer holds (the target is backed by the source's backing)
 *   sync=none  nothing; only writes made while the job runs reach the target (backed by the source)
 */
import { BlkioError } from '../errors.js';
import type { BlockLayer } from '../block/graph.js';
import { REQ_MAY_UNMAP, STATUS_ALLOCATED, STATUS_ZERO } from '../block/flags.js';
import type { BlockNode } from '../block/node.js';
import { blockStatusAbove, nodeInfo } from '../block/io.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../block/permissions.js';
import { withRangeLock } from '../drivers/mirror-top.js';
import { ioBuffer } from '../io-buffers.js';
import { backingImage, STATUS_LOOKAHEAD } from './chain.js';
import { Job, type JobOptions } from './job.js';

export type MirrorSync = 'full' | 'top' | 'none';

/** What to do with one range of the source. */
type RangeAction = 'copy' | 'zero' | 'skip';

/** Decide the action for a range at offset; returns it and how many bytes it covers. */
export type RangePlanner = (offset: number, bytes: number) => Promise<{ action: RangeAction; bytes: number }>;

/**
 * Plan for copying what `source` holds above `stop` (undefined: its whole chain). Zero ranges
 * are written as zeroes when the target may hold other data there, else skipped.
 */
export function planAbove(source: BlockNode, stop: BlockNode | undefined, targetReadsZero: boolean): RangePlanner {
  return async (offset, bytes) => {
    const { status, pnum } = await blockStatusAbove(source, stop, offset, bytes);
    const zero = (status & STATUS_ZERO) !== 0;
    if (!(status & STATUS_ALLOCATED) || (zero && targetReadsZero)) return { action: 'skip', bytes: pnum };
    return { action: zero ? 'zero' : 'copy', bytes: pnum };
  };
}


/** QEMU's default dirty-bitmap granularity: the target's cluster size within [4 KiB, 64 KiB], else 64 KiB. */
function defaultGranularity(clusterSize: number | undefined): number {
  return clusterSize ? Math.min(Math.max(clusterSize, 4096), 65536) : 65536;
}

/**
 * Plan for copying what `source` holds above `stop` into `target` as QEMU's mirror (and so
 * qemu-img commit) does: in chunks of the granularity, a chunk being dirty when any byte of it
 * is allocated above `stop`. A dirty run is copied as the whole chain reads it: data from its
 * start takes whole chunks along (a 4 KiB write in a 64 KiB chunk copies the 64 KiB); zeroes
 * are written as zeroes only over whole chunks aligned to the target's clusters.
 */
export function planAboveInChunks(source: BlockNode, stop: BlockNode, target: BlockNode): RangePlanner {
  const clusterSize = nodeInfo(target).clusterSize;
  const granularity = defaultGranularity(clusterSize);
  const targetCluster = clusterSize ?? 1;
  const chunkEnd = (pos: number, limit: number) => Math.min(Math.ceil(pos / granularity) * granularity, limit);
  /**
   * The last clean answer: the clean chunks that end a dirty run start the next plan, asked
   * once. It holds for a later (farther) limit too unless it stopped at its own.
   */
  let lastClean: { pos: number; limit: number; bytes: number } | undefined;
  /** Whether the chunk at `pos` is dirty, and how many bytes from `pos` (whole chunks) share that answer. */
  const dirtyAt = async (pos: number, limit: number): Promise<{ dirty: boolean; bytes: number }> => {
    if (lastClean?.pos === pos && (lastClean.limit === limit || pos + lastClean.bytes < lastClean.limit)) {
      return { dirty: false, bytes: lastClean.bytes };
    }
    const end = chunkEnd(pos + 1, limit);
    let cleanEnd = end;
    for (let p = pos; p < end;) {
      const s = await blockStatusAbove(source, stop, p, limit - p);
      if (s.status & STATUS_ALLOCATED) return { dirty: true, bytes: chunkEnd(p + s.pnum, limit) - pos };
      if (p === pos && p + s.pnum >= end) {
        cleanEnd = p + s.pnum >= limit ? limit : Math.floor((p + s.pnum) / granularity) * granularity;
        break;
      }
      p += s.pnum;
    }
    lastClean = { pos, limit, bytes: cleanEnd - pos };
    return { dirty: false, bytes: cleanEnd - pos };
  };
  return async (offset, bytes) => {
    const limit = offset + bytes;
    const first = await dirtyAt(offset, limit);
    if (!first.dirty) return { action: 'skip', bytes: first.bytes };
    let runEnd = offset + first.bytes;
    while (runEnd < limit) {
      const next = await dirtyAt(runEnd, limit);
      if (!next.dirty) break;
      runEnd += next.bytes;
    }
    const whole = await blockStatusAbove(source, undefined, offset, runEnd - offset);
    const wholeChunks = offset + whole.pnum >= runEnd
      ? runEnd - offset : Math.floor((offset + whole.pnum) / granularity) * granularity - offset;
    const oneChunk = chunkEnd(offset + 1, runEnd) - offset;
    // Unallocated down to the bottom reads as zeroes too.
    const readsZero = !(whole.status & STATUS_ALLOCATED) || (whole.status & STATUS_ZERO) !== 0;
    if (!readsZero) return { action: 'copy', bytes: Math.max(wholeChunks, oneChunk) };
    if (wholeChunks < oneChunk) return { action: 'copy', bytes: oneChunk };
    const aligned = offset % targetCluster === 0 && (offset + wholeChunks) % targetCluster === 0;
    return { action: aligned ? 'zero' : 'copy', bytes: wholeChunks };
  };
}


/**
 * Copy `source` to `target` as `plan` says, with a mirror_top filter above the source for the
 * job's lifetime so that concurrent writes reach both. Progress covers the source's length.
 */
export async function mirrorCopy(job: Job, source: BlockNode, target: BlockNode, plan: RangePlanner): Promise<void> {
  const filter = await job.insertFilter(source, { driver: 'mirror_top', target: target.nodeName }, 'backing');
  const reader = job.attach(filter, PERM_CONSISTENT_READ, PERM_ALL);
  const writer = job.attach(target, PERM_WRITE, PERM_ALL);
  const length = source.getLength();
  job.setTotal(length);

  const free: Uint8Array[] = Array.from({ length: job.inFlight }, () => ioBuffer(job.chunkSize));
  async function* ranges() {
    for (let offset = 0; offset < length;) {
      const { action, bytes } = await plan(offset, Math.min(length - offset, STATUS_LOOKAHEAD));
      if (action === 'skip') {
        job.advance(bytes);
        offset += bytes;
        continue;
      }
      // A copy reads the source under the range lock whenever it runs, so one answer serves
      // all its chunks; zeroes are planned again for each chunk (a write may land meanwhile).
      const end = offset + (action === 'copy' ? bytes : Math.min(bytes, job.chunkSize));
      while (offset < end) {
        const n = Math.min(end - offset, job.chunkSize);
        yield { offset, bytes: n, action };
        offset += n;
      }
    }
  }
  await job.forEachInFlight(ranges(), ({ offset, bytes, action }) =>
    withRangeLock(filter, offset, bytes, async () => {
      if (action === 'zero') return writer.writeZeroes(offset, bytes, REQ_MAY_UNMAP);
      const buf = free.pop()!;
      try {
        await reader.read(offset, bytes, buf.subarray(0, bytes));
        await writer.write(offset, bytes, buf.subarray(0, bytes));
      } finally {
        free.push(buf);
      }
    }),
  );
  await writer.flush();
}

export interface MirrorOptions extends JobOptions {
  sync?: MirrorSync;
}

/** Mirror `source` into the already created and opened `target` (same length). */
export async function mirror(layer: BlockLayer, source: BlockNode, target: BlockNode, options: MirrorOptions = {}): Promise<void> {
  const sync = options.sync ?? 'full';
  if (target.getLength() !== source.getLength()) {
    throw new BlkioError('EINVAL', 'Source and target image have different sizes');
  }
  const job = new Job(layer, options);
  const plan: RangePlanner = sync === 'full'
    ? planAbove(source, undefined, true)
    : sync === 'top'
      ? planAbove(source, backingImage(source), false)
      : async (_offset, bytes) => ({ action: 'skip', bytes });
  await job.run(() => mirrorCopy(job, source, target, plan));
}
