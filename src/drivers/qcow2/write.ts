/**
 * Guest writes: find (or allocate) a contiguous host range for as much of the request as
 * possible, write the data there outside the lock, then link the new clusters; repeat.
 * Compressed writes deflate whole clusters into byte-packed host space.
 */
import { errno } from '../../errors.js';
import { debugEvent } from '../../block/io.js';
import { abortAllocations, allocHostOffset, handleAllocSpace, linkAllocations, mergeCow, type HostRange } from './allocation.js';
import { compressCluster } from './codecs.js';
import { allocCompressedCluster } from './compressed.js';
import { offsetIntoCluster, type Qcow2State } from './state.js';

/** Allocate the host range for the start of `[offset, offset + bytes)`, waiting out conflicting allocations. */
export async function hostRangeFor(s: Qcow2State, offset: number, bytes: number): Promise<HostRange> {
  for (;;) {
    const result = await s.lock.run(() => allocHostOffset(s, offset, bytes));
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
}

async function writeChunkData(s: Qcow2State, c: Chunk): Promise<void> {
  if (mergeCow(c.range.metas, c.offset, c.range.bytes, c.data)) return;
  debugEvent(s.file.node, 'write_aio');
  await s.file.write(c.range.hostOffset, c.range.bytes, c.data);
}

/** Write the chunks' data concurrently, then link their allocations in order. */
async function completeChunks(s: Qcow2State, chunks: Chunk[]): Promise<void> {
  // Zeroing new clusters may grow the file: one chunk after the other, before any data lands.
  const prepared: Array<Promise<void>> = [];
  for (const c of chunks) {
    const p = handleAllocSpace(s, c.range.metas);
    prepared.push(p);
    await p.catch(() => {});
  }
  const written = await Promise.allSettled(chunks.map((c, i) => prepared[i].then(() => writeChunkData(s, c))));
  let error: unknown;
  for (const [i, c] of chunks.entries()) {
    const w = written[i];
    try {
      if (w.status === 'rejected') throw w.reason;
      await linkAllocations(s, c.range.metas);
    } catch (e) {
      if (w.status === 'rejected') await s.lock.run(() => abortAllocations(s, c.range.metas));
      error ??= e;
    }
  }
  if (error !== undefined) throw error;
}

/**
 * Split the request into host-contiguous chunks. As in QEMU, where each chunk's data write
 * and L2 update run as a separate task while the next chunks are allocated, up to eight
 * chunks are allocated before the first one is linked (which matters when linking frees
 * clusters the next allocation could otherwise reuse).
 */
export async function writeGuest(s: Qcow2State, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  let chunks: Chunk[] = [];
  try {
    for (let done = 0; done < bytes;) {
      if (chunks.length === MAX_WORKERS) {
        const batch = chunks;
        chunks = [];
        await completeChunks(s, batch);
      }
      const range = await hostRangeFor(s, offset + done, bytes - done);
      chunks.push({ offset: offset + done, range, data: buf.subarray(done, done + range.bytes) });
      done += range.bytes;
    }
  } catch (e) {
    await completeChunks(s, chunks).catch(() => {});
    throw e;
  }
  await completeChunks(s, chunks);
}

/**
 * `write -c`: whole clusters (the last one may end at the image end), each compressed on its own.
 * An empty request ends a run of compressed writes: the file is padded to whole sectors, as QEMU
 * does, since compressed data ends anywhere.
 */
export async function writeCompressedGuest(s: Qcow2State, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  if (bytes === 0) return s.file.truncate(Math.ceil(s.file.getLength() / SECTOR) * SECTOR, false);
  if (offsetIntoCluster(s, offset)) throw errno('EINVAL');
  if (offsetIntoCluster(s, bytes) && offset + bytes !== s.size) throw errno('EINVAL');
  for (let done = 0; done < bytes; done += s.clusterSize) {
    const chunk = Math.min(s.clusterSize, bytes - done);
    const cluster = new Uint8Array(s.clusterSize);
    cluster.set(buf.subarray(done, done + chunk));
    const compressed = await compressCluster(s.header.compressionType, cluster);
    if (!compressed) {
      // Incompressible: an ordinary write.
      await writeGuest(s, offset + done, chunk, buf.subarray(done, done + chunk));
      continue;
    }
    const host = await s.lock.run(() => allocCompressedCluster(s, offset + done, compressed.length));
    debugEvent(s.file.node, 'write_compressed');
    await s.file.write(host, compressed.length, compressed);
  }
}
