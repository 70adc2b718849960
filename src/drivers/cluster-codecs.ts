/**
 * Compression of whole image clusters, by qcow2's compression type numbers (qcow v1 uses zlib's).
 * With blkio's addon and the system
 * libz.so.1 / libzstd.so.1 (the libraries QEMU links), the work runs in native code on libuv's
 * thread pool and a cluster compresses to exactly QEMU's bytes. Without them: Node's zlib
 * deflates with QEMU's parameters (a valid stream, but other bytes, since Node bundles another
 * deflate implementation), zstd clusters are read with the pure-JS fzstd and none are written
 * (the caller stores the cluster uncompressed, as QEMU does when compression saves nothing).
 */
import { errno } from '../errors.js';
import { lazyBuiltin } from '../lazy-builtin.js';
import { nativeAddon } from '../native-addon.js';

/** The compression types (qcow2's header field values). */
export const COMPRESSION_ZLIB = 0;
export const COMPRESSION_ZSTD = 1;

/** The addon's codec exports (native/codecs.c); `type` is the header's compression type. */
interface CodecAddon {
  codecAvailable(type: number): boolean;
  /** Bytes written to `output`, or -1 when the compressed cluster does not fit. */
  compress(type: number, input: Uint8Array, output: Uint8Array): Promise<number>;
  /** Whether `output` was filled with a cluster QEMU would accept. */
  decompress(type: number, input: Uint8Array, output: Uint8Array): Promise<boolean>;
}

const codecs = new Map<number, CodecAddon | undefined>();

/** The addon when it can handle compression `type` (one library lookup per type per process). */
function nativeCodec(type: number): CodecAddon | undefined {
  if (!codecs.has(type)) {
    const addon = nativeAddon() as Partial<CodecAddon> | undefined;
    codecs.set(type, addon?.codecAvailable?.(type) ? addon as CodecAddon : undefined);
  }
  return codecs.get(type);
}

const zlib = lazyBuiltin<typeof import('node:zlib')>('node:zlib');
/** QEMU's deflate parameters: raw deflate (no header), a 4 KiB window, memLevel 9, default level. */
const WINDOW_BITS = 12;
const MEM_LEVEL = 9;

/**
 * Compress one cluster; undefined when the result would not be smaller than the cluster (QEMU
 * needs at least one byte saved) or, without the native zstd codec, for zstd.
 */
export async function compressCluster(type: number, cluster: Uint8Array): Promise<Uint8Array | undefined> {
  const native = nativeCodec(type);
  if (native) {
    const out = Buffer.allocUnsafe(cluster.length - 1);
    const n = await native.compress(type, cluster, out);
    return n < 0 ? undefined : out.subarray(0, n);
  }
  if (type !== COMPRESSION_ZLIB) return undefined;
  const { constants, deflateRawSync } = zlib();
  const out = deflateRawSync(cluster, { level: constants.Z_DEFAULT_COMPRESSION, windowBits: WINDOW_BITS, memLevel: MEM_LEVEL });
  return out.length < cluster.length ? out : undefined;
}

/**
 * Decompress into exactly the cluster `out`. The stored size is rounded up to whole sectors, so
 * input may go on past the stream; a stream that fills the cluster without ending is accepted,
 * as QEMU does. A cluster that does not decode fills `out` only partly: EIO.
 */
export async function decompressCluster(type: number, input: Uint8Array, out: Uint8Array): Promise<void> {
  const native = nativeCodec(type);
  if (native) {
    if (!(await native.decompress(type, input, out))) throw errno('EIO');
  } else if (type === COMPRESSION_ZLIB) {
    await inflateWithNode(input, out);
  } else {
    await zstdDecompressWithFzstd(input, out);
  }
}

/** Inflate until `out` is full; the stream may go on (Node's one-shot inflate cannot stop there, a stream can). */
async function inflateWithNode(input: Uint8Array, out: Uint8Array): Promise<void> {
  const { constants, createInflateRaw } = zlib();
  const inflater = createInflateRaw({ windowBits: WINDOW_BITS, finishFlush: constants.Z_SYNC_FLUSH });
  let filled = 0;
  await new Promise<void>((resolve) => {
    inflater.on('data', (chunk: Buffer) => {
      const n = Math.min(chunk.length, out.length - filled);
      out.set(chunk.subarray(0, n), filled);
      filled += n;
      if (filled === out.length) {
        inflater.destroy();
        resolve();
      }
    });
    inflater.on('error', () => resolve());
    inflater.on('end', () => resolve());
    inflater.end(input);
  });
  if (filled !== out.length) throw errno('EIO');
}

/** Inflate a zstd stream until `out` is full; what follows in the input is never decoded. */
async function zstdDecompressWithFzstd(input: Uint8Array, out: Uint8Array): Promise<void> {
  // Loaded on first use: building its tables cost every command ~0.3 ms at startup.
  const { Decompress } = await import('fzstd');
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
