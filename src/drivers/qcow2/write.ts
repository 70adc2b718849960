/**
 * Guest writes: find (or allocate) a contiguous host range for as much of the request as
 * possible, write the data there outside the lock, then link the new clusters; repeat.
 * Compressed writes deflate whole clusters into byte-packed host space.
 */
import { errno } from '../../errors.js';
import { debugEvent } from '../../block/io.js';
import { abortAllocations, allocHostOffset, linkAllocations, mergeCow, type HostRange } from './allocation.js';
import { allocCompressedCluster, compressCluster } from './compressed.js';
import { offsetIntoCluster, type Qcow2State } from './state.js';

/** Allocate the host range for the start of `[offset, offset + bytes)`, waiting out conflicting allocations. */
export async function hostRangeFor(s: Qcow2State, offset: number, bytes: number): Promise<HostRange> {
  for (;;) {
    const result = await s.lock.run(() => allocHostOffset(s, offset, bytes));
    if (!('wait' in result)) return result;
    await result.wait;
  }
}

export async function writeGuest(s: Qcow2State, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes) {
    const range = await hostRangeFor(s, offset + done, bytes - done);
    const data = buf.subarray(done, done + range.bytes);
    try {
      if (!mergeCow(range.metas, offset + done, range.bytes, data)) {
        debugEvent(s.file.node, 'write_aio');
        await s.file.write(range.hostOffset, range.bytes, data);
      }
    } catch (e) {
      await s.lock.run(() => abortAllocations(s, range.metas));
      throw e;
    }
    await linkAllocations(s, range.metas);
    done += range.bytes;
  }
}

/** `write -c`: whole clusters (the last one may end at the image end), each deflated on its own. */
export async function writeCompressedGuest(s: Qcow2State, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  if (offsetIntoCluster(s, offset)) throw errno('EINVAL');
  if (offsetIntoCluster(s, bytes) && offset + bytes !== s.size) throw errno('EINVAL');
  for (let done = 0; done < bytes; done += s.clusterSize) {
    const chunk = Math.min(s.clusterSize, bytes - done);
    const cluster = new Uint8Array(s.clusterSize);
    cluster.set(buf.subarray(done, done + chunk));
    const compressed = compressCluster(s, cluster);
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
