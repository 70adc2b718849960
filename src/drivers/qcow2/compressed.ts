/**
 * Compressed clusters: reading them, and allocating byte-packed room for new ones in shared host
 * clusters. The codecs themselves (zlib, zstd) are in codecs.ts.
 */
import { errno } from '../../errors.js';
import { debugEvent } from '../../block/io.js';
import { decompressCluster } from '../cluster-codecs.js';
import { HI_COMPRESSED } from './entries.js';
import { getClusterTable, l2Offset, readL2, writeL2, type L2Entry } from './mapping.js';
import { allocBytes, compressedDescriptor } from './refcount.js';
import type { Qcow2State } from './state.js';

/** Read `bytes` at `inCluster` of the compressed cluster `entry` into `buf`. */
export async function readCompressed(s: Qcow2State, entry: L2Entry, inCluster: number, bytes: number, buf: Uint8Array): Promise<void> {
  const { offset, size } = compressedDescriptor(s, entry.hi, entry.lo);
  const input = new Uint8Array(size);
  debugEvent(s.file.node, 'read_compressed');
  await s.file.read(offset, size, input);
  if (bytes === s.clusterSize) return decompressCluster(s.header.compressionType, input, buf);
  const cluster = new Uint8Array(s.clusterSize);
  await decompressCluster(s.header.compressionType, input, cluster);
  buf.set(cluster.subarray(inCluster, inCluster + bytes));
}

/**
 * Allocate room for `compressed` at guest cluster `offset` and point the L2 entry at it (lock
 * held). The cluster must not be allocated yet. Returns the host byte offset to write to.
 */
export async function allocCompressedCluster(s: Qcow2State, offset: number, compressedBytes: number): Promise<number> {
  const { slice, index } = await getClusterTable(s, offset);
  try {
    if (l2Offset(readL2(s, slice, index))) throw errno('EIO');
    const host = await allocBytes(s, compressedBytes);
    const sectors = Math.floor((host + compressedBytes - 1) / 512) - Math.floor(host / 512);
    const descriptor = (BigInt(sectors) << BigInt(s.csizeShift)) | BigInt(host);
    debugEvent(s.file.node, 'l2_update_compressed');
    s.l2Cache.markDirty(slice);
    writeL2(s, slice, index, {
      hi: (Number(descriptor >> 32n) | HI_COMPRESSED) >>> 0, lo: Number(descriptor & 0xffffffffn), zero: 0, alloc: 0,
    });
    return host;
  } finally {
    s.l2Cache.put(slice);
  }
}
