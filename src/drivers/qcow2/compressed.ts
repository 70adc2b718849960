/**
 * Compressed clusters: zlib raw deflate with a 4 KiB window (what QEMU writes), packed byte-wise
 * into shared host clusters. zstd clusters (compression type 1) are read with fzstd, since
 * Node 20's zlib has no zstd codec; in zstd images new clusters are written uncompressed, as
 * QEMU does whenever compression would not save space.
 */
import { Decompress } from 'fzstd';
import { errno } from '../../errors.js';
import { lazyBuiltin } from '../../lazy-builtin.js';
import { debugEvent } from '../../block/io.js';
import { HI_COMPRESSED } from './entries.js';
import { COMPRESSION_ZLIB } from './header.js';
import { getClusterTable, l2Offset, readL2, writeL2, type L2Entry } from './mapping.js';
import { allocBytes, compressedDescriptor } from './refcount.js';
import type { Qcow2State } from './state.js';

const zlib = lazyBuiltin<typeof import('node:zlib')>('node:zlib');
const WINDOW_BITS = 12;
const MEM_LEVEL = 9;

/**
 * Inflate a zstd stream until `out` is full. The stored size is rounded up to whole sectors, so
 * what follows the frame (the next compressed cluster, or anything) is never decoded.
 */
function zstdDecompress(input: Uint8Array, out: Uint8Array): void {
  let filled = 0;
  const full = new Error('cluster complete');
  const stream = new Decompress((chunk) => {
    const n = Math.min(chunk.length, out.length - filled);
    out.set(chunk.subarray(0, n), filled);
    filled += n;
    if (filled === out.length) throw full;
  });
  try {
    stream.push(input, true);
  } catch (e) {
    if (e !== full) throw errno('EIO');
  }
  if (filled !== out.length) throw errno('EIO');
}

/** Deflate one cluster; undefined when the result would not be smaller than a cluster. */
export function compressCluster(s: Qcow2State, data: Uint8Array): Uint8Array | undefined {
  if (s.header.compressionType !== COMPRESSION_ZLIB) return undefined;
  const { constants, deflateRawSync } = zlib();
  const out = deflateRawSync(data, { level: constants.Z_DEFAULT_COMPRESSION, windowBits: WINDOW_BITS, memLevel: MEM_LEVEL });
  return out.length <= s.clusterSize - 1 ? out : undefined;
}

/** Inflate into exactly one cluster; a stream that fills the cluster without ending is accepted as QEMU does. */
export function decompressCluster(s: Qcow2State, input: Uint8Array, out: Uint8Array): void {
  if (s.header.compressionType !== COMPRESSION_ZLIB) return zstdDecompress(input, out);
  const { constants, inflateRawSync } = zlib();
  let result: Buffer;
  try {
    result = inflateRawSync(input, {
      windowBits: WINDOW_BITS, finishFlush: constants.Z_SYNC_FLUSH, maxOutputLength: s.clusterSize,
    });
  } catch (e) {
    if ((e as { code?: string }).code !== 'ERR_BUFFER_TOO_LARGE') throw errno('EIO');
    result = inflateRawSync(input, { windowBits: WINDOW_BITS, finishFlush: constants.Z_SYNC_FLUSH, maxOutputLength: s.clusterSize + 1 })
      .subarray(0, s.clusterSize);
  }
  if (result.length !== s.clusterSize) throw errno('EIO');
  out.set(result);
}

/** Read `bytes` at `inCluster` of the compressed cluster `entry` into `buf`. */
export async function readCompressed(s: Qcow2State, entry: L2Entry, inCluster: number, bytes: number, buf: Uint8Array): Promise<void> {
  const { offset, size } = compressedDescriptor(s, entry.hi, entry.lo);
  const input = new Uint8Array(size);
  debugEvent(s.file.node, 'read_compressed');
  await s.file.read(offset, size, input);
  const cluster = new Uint8Array(s.clusterSize);
  decompressCluster(s, input, cluster);
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
