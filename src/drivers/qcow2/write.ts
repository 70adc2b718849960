/**
 * Guest writes: find (or allocate) a contiguous host range for as much of the request as
 * possible, write the data there outside the lock, then link the new clusters; repeat.
 * Compressed writes deflate whole clusters into byte-packed host space.
 */
import { errno } from '../../errors.js';
import { debugEvent } from '../../block/io.js';
import { abortAllocations, allocHostOffset, handleAllocSpace, linkAllocations, mergeCow, type HostRange } from './allocation.js';
import { compressCluster } from '../cluster-codecs.js';
import { encryptedCopy } from './crypto.js';
import { allocCompressedCluster } from './compressed.js';
import { preventMetadataOverwrite } from './overlap.js';
import { hasDataFile, offsetIntoCluster, type Qcow2State } from './state.js';

/**
 * Allocate the host range for the start of `[offset, offset + bytes)`, waiting out conflicting
 * allocations. With `checkOverlap`, a range over metadata is refused and undone while the lock
 * is still held, as in QEMU: earlier chunks cannot link theirs (and flush refcounts) in between.
 */
export async function hostRangeFor(s: Qcow2State, offset: number, bytes: number, checkOverlap = false): Promise<HostRange> {
  for (;;) {
    const result = await s.lock.run(async () => {
      const range = await allocHostOffset(s, offset, bytes);
      // Guest data in an external data file cannot hit the image's metadata.
      if ('wait' in range || !checkOverlap || hasDataFile(s)) return range;
      try {
        await preventMetadataOverwrite(s, range.hostOffset, range.bytes);
      } catch (e) {
        await abortAllocations(s, range.metas);
        throw e;
      }
      return range;
    });
    if (!('wait' in result)) return result;
    await result.wait;
  }
}

/** Compressed data is addressed in 512-byte sectors. */
const SECTOR = 512;

/** Chunks whose data writes run at once (QEMU's request workers). */
const MAX_WORKERS = 8;

interface Chunk {
  offset: number;
  range: HostRange;
  data: Uint8Array;
  /** Settles when the chunk's new clusters are prepared and its data is written. */
  written: Promise<void>;
}

async function writeChunkData(s: Qcow2State, c: Omit<Chunk, 'written'>): Promise<void> {
  const data = s.encryption ? encryptedCopy(s.encryption, c.data, c.offset, c.range.hostOffset) : c.data;
  if (mergeCow(c.range.metas, c.offset, c.range.bytes, data)) return;
  debugEvent(s.file.node, 'write_aio');
  await s.dataFile.write(c.range.hostOffset, c.range.bytes, data);
}

/** Link the chunk's allocations once its data is written, or undo them if the write failed. */
async function completeChunk(s: Qcow2State, c: Chunk): Promise<void> {
  try {
    await c.written;
  } catch (e) {
    await s.lock.run(() => abortAllocations(s, c.range.metas));
    throw e;
  }
  await linkAllocations(s, c.range.metas);
}

/**
 * Split the request into host-contiguous chunks. As in QEMU, where each chunk's data write
 * and L2 update run as a separate task while the next chunks are allocated, and a ninth chunk
 * waits for the oldest task to finish, at most eight chunks are in flight. This matters for
 * the layout: linking frees clusters (compressed ones, say) that later chunks could reuse.
 */
export async function writeGuest(s: Qcow2State, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  const inFlight: Chunk[] = [];
  // Zeroing new clusters may grow the file: chunks prepare one after the other.
  let prepared: Promise<void> = Promise.resolve();
  let error: unknown;
  const completeOldest = async (): Promise<void> => {
    try {
      await completeChunk(s, inFlight.shift()!);
    } catch (e) {
      error ??= e;
    }
  };
  for (let done = 0; done < bytes && error === undefined;) {
    if (inFlight.length === MAX_WORKERS) {
      await completeOldest();
      continue;
    }
    let range: HostRange;
    try {
      range = await hostRangeFor(s, offset + done, bytes - done, true);
    } catch (e) {
      error = e;
      break;
    }
    const chunk = { offset: offset + done, range, data: buf.subarray(done, done + range.bytes) };
    const ready = prepared.catch(() => {}).then(() => handleAllocSpace(s, range.metas));
    prepared = ready;
    const written = ready.then(() => writeChunkData(s, chunk));
    // Awaited in turn by completeChunk; until then a failure must not count as unhandled.
    written.catch(() => {});
    inFlight.push({ ...chunk, written });
    done += range.bytes;
  }
  while (inFlight.length) await completeOldest();
  if (error !== undefined) throw error;
}

/** Clusters of one compressed write that QEMU compresses at a time (QCOW2_MAX_WORKERS). */
const COMPRESSION_WORKERS = 8;

/**
 * `write -c`: whole clusters (the last one may end at the image end), each compressed on its own.
 * An empty request ends a run of compressed writes: the file is padded to whole sectors, as QEMU
 * does, since compressed data ends anywhere. A cluster that fails (one already allocated) fails
 * the request, but as in QEMU the clusters being compressed alongside it are still written.
 */
export async function writeCompressedGuest(s: Qcow2State, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  if (hasDataFile(s)) throw errno('ENOTSUP');
  if (bytes === 0) return s.file.truncate(Math.ceil(s.file.getLength() / SECTOR) * SECTOR, false);
  if (offsetIntoCluster(s, offset)) throw errno('EINVAL');
  if (offsetIntoCluster(s, bytes) && offset + bytes !== s.size) throw errno('EINVAL');
  let failure: unknown;
  let end = bytes;
  for (let done = 0; done < end; done += s.clusterSize) {
    try {
      await writeCompressedCluster(s, offset + done, buf.subarray(done, done + Math.min(s.clusterSize, bytes - done)));
    } catch (e) {
      if (failure !== undefined) continue;
      failure = e;
      // The clusters in flight with it, and the next one, which was waiting for its place.
      end = Math.min(bytes, done + (COMPRESSION_WORKERS + 1) * s.clusterSize);
    }
  }
  if (failure !== undefined) throw failure;
}

/** One cluster of a compressed write (`data` may be short at the image end). */
async function writeCompressedCluster(s: Qcow2State, offset: number, data: Uint8Array): Promise<void> {
  // Only a partial last cluster needs a zero-padded copy.
  let cluster = data;
  if (data.length < s.clusterSize) {
    cluster = new Uint8Array(s.clusterSize);
    cluster.set(data);
  }
  const compressed = await compressCluster(s.header.compressionType, cluster);
  if (!compressed) {
    // Incompressible: an ordinary write.
    await writeGuest(s, offset, data.length, data);
    return;
  }
  const host = await s.lock.run(() => allocCompressedCluster(s, offset, compressed.length));
  debugEvent(s.file.node, 'write_compressed');
  await s.file.write(host, compressed.length, compressed);
}
