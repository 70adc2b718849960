/** qcow2 cluster codecs: native round trips, QEMU's exact bytes, QEMU's acceptance rules, and the pure-JS fallback. */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { compressCluster, COMPRESSION_ZLIB, COMPRESSION_ZSTD, decompressCluster } from '../../../../src/drivers/cluster-codecs.js';
import { nativeAddon } from '../../../../src/native-addon.js';
import { BlkioError } from '../../../../src/errors.js';
import { haveQemu, qemuImg, qemuIo, tempDir } from './helpers.js';

const K = 1024;
const TYPES = [['zlib', COMPRESSION_ZLIB], ['zstd', COMPRESSION_ZSTD]] as const;

const addon = nativeAddon() as { codecAvailable?: (type: number) => boolean } | undefined;
const haveNative = TYPES.every(([, type]) => addon?.codecAvailable?.(type) === true);

/** Deterministic pseudo-random words (xorshift32). */
function noise(bytes: number, seed: number): Uint8Array {
  const words = new Uint32Array(bytes / 4);
  let x = seed;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return new Uint8Array(words.buffer);
}

/** Clusters that compress well, a little, or not at all. */
function samples(clusterSize: number): Array<[string, Uint8Array]> {
  const words = ['block', 'cluster', 'refcount', 'qcow2', 'zstd', 'deflate', 'sector', '\n'];
  const text = Buffer.alloc(clusterSize);
  const picks = noise(clusterSize, 7);
  for (let at = 0, i = 0; at < clusterSize; i++) at += text.write(`${words[picks[i] % words.length]} `, at);
  const patterned = new Uint8Array(clusterSize);
  patterned.set(noise(64, 3));
  for (let filled = 64; filled < clusterSize; filled *= 2) patterned.copyWithin(filled, 0, filled);
  const lowEntropy = noise(clusterSize, 11).map((b) => b & 0x0f);
  return [['text', new Uint8Array(text.buffer, text.byteOffset, text.length)], ['patterned', patterned], ['low-entropy', lowEntropy], ['zeroes', new Uint8Array(clusterSize)]];
}

describe.runIf(haveNative)('native codecs', () => {
  for (const [name, type] of TYPES) {
    for (const clusterSize of [512, 64 * K]) {
      it(`${name}: clusters of ${clusterSize} bytes round-trip`, async () => {
        for (const [, data] of samples(clusterSize)) {
          const compressed = await compressCluster(type, data);
          expect(compressed!.length).toBeLessThan(clusterSize);
          const back = new Uint8Array(clusterSize);
          await decompressCluster(type, compressed!, back);
          expect(back).toEqual(data);
        }
      });
    }

    it(`${name}: a cluster that would not shrink is not compressed`, async () => {
      expect(await compressCluster(type, noise(64 * K, 5))).toBeUndefined();
    });

    it(`${name}: a truncated or damaged cluster is EIO`, async () => {
      const [, text] = samples(64 * K)[0];
      const compressed = (await compressCluster(type, text))!;
      const out = new Uint8Array(64 * K);
      await expect(decompressCluster(type, compressed.subarray(0, compressed.length >> 1), out)).rejects.toMatchObject({ code: 'EIO' });
      await expect(decompressCluster(type, noise(compressed.length, 9), out)).rejects.toBeInstanceOf(BlkioError);
    });

    it(`${name}: sector padding after the stream is ignored, as QEMU reads it`, async () => {
      const [, text] = samples(4 * K)[0];
      const compressed = (await compressCluster(type, text))!;
      const padded = new Uint8Array(Math.ceil((compressed.length + 1) / 512) * 512).fill(0xa5);
      padded.set(compressed);
      const out = new Uint8Array(4 * K);
      await decompressCluster(type, padded, out);
      expect(out).toEqual(text);
    });
  }

  it('zlib: a stream that goes on past the cluster is accepted, zstd: it is EIO (as in QEMU)', async () => {
    const [, text] = samples(8 * K)[0];
    const zlibStream = (await compressCluster(COMPRESSION_ZLIB, text))!;
    const firstHalf = new Uint8Array(4 * K);
    await decompressCluster(COMPRESSION_ZLIB, zlibStream, firstHalf);
    expect(firstHalf).toEqual(text.subarray(0, 4 * K));

    const compressed = (await compressCluster(COMPRESSION_ZSTD, text))!;
    await expect(decompressCluster(COMPRESSION_ZSTD, compressed, new Uint8Array(4 * K))).rejects.toMatchObject({ code: 'EIO' });
  });
});

/** The compressed bytes of guest cluster 0 of a qcow2 image, as its L2 entry describes them. */
function firstCompressedCluster(image: Uint8Array): { offset: number; data: Uint8Array } {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const clusterBits = view.getUint32(20);
  const l1 = Number(view.getBigUint64(40));
  const l2 = Number(view.getBigUint64(l1) & 0x00fffffffffffe00n);
  const entry = view.getBigUint64(l2);
  expect(entry >> 62n).toBe(1n); // compressed
  const offsetBits = BigInt(62 - (clusterBits - 8));
  const offset = Number(entry & ((1n << offsetBits) - 1n));
  return { offset, data: image.subarray(offset) };
}

describe.runIf(haveNative && haveQemu)('native codecs against QEMU', () => {
  const tmp = tempDir();
  afterAll(() => tmp.remove());

  for (const [name, type] of TYPES) {
    it(`${name}: a cluster compresses to the bytes QEMU writes, and reads back`, async () => {
      for (const [sample, data] of samples(64 * K)) {
        const file = tmp.path(`${name}-${sample}.qcow2`);
        const input = tmp.path(`${name}-${sample}.bin`);
        writeFileSync(input, data);
        qemuImg('create', '-q', '-f', 'qcow2', '-o', `compression_type=${name}`, file, '64k');
        qemuIo(file, [`write -c -s ${input} 0 64k`]);
        const written = firstCompressedCluster(readFileSync(file));
        const ours = (await compressCluster(type, data))!;
        // The cluster is the last thing in the file: nothing after it.
        expect(Buffer.from(written.data)).toEqual(Buffer.from(ours));
        const back = new Uint8Array(64 * K);
        await decompressCluster(type, written.data, back);
        expect(back).toEqual(data);
      }
    });
  }
});

describe('without the addon', () => {
  afterEach(() => {
    vi.unstubAllEnvs();
    vi.resetModules();
  });

  async function fallbackCodecs(): Promise<typeof import('../../../../src/drivers/cluster-codecs.js')> {
    vi.stubEnv('BLKIO_NO_NATIVE', '1');
    vi.resetModules();
    return import('../../../../src/drivers/cluster-codecs.js');
  }

  it("zlib: Node's deflate writes a stream that both codecs read", async () => {
    const fallback = await fallbackCodecs();
    const [, text] = samples(64 * K)[0];
    const compressed = (await fallback.compressCluster(COMPRESSION_ZLIB, text))!;
    for (const decompress of haveNative ? [fallback.decompressCluster, decompressCluster] : [fallback.decompressCluster]) {
      const out = new Uint8Array(64 * K);
      await decompress(COMPRESSION_ZLIB, compressed, out);
      expect(out).toEqual(text);
    }
    await expect(fallback.decompressCluster(COMPRESSION_ZLIB, compressed.subarray(0, 100), new Uint8Array(64 * K)))
      .rejects.toMatchObject({ code: 'EIO' });
  });

  it('zlib: a stream that goes on past the cluster is accepted, as QEMU does', async () => {
    const fallback = await fallbackCodecs();
    const [, text] = samples(64 * K)[0];
    const compressed = (await fallback.compressCluster(COMPRESSION_ZLIB, text))!;
    const firstQuarter = new Uint8Array(16 * K);
    await fallback.decompressCluster(COMPRESSION_ZLIB, compressed, firstQuarter);
    expect(firstQuarter).toEqual(text.subarray(0, 16 * K));
  });

  it('zstd: nothing is compressed, and fzstd reads what libzstd wrote', async () => {
    const fallback = await fallbackCodecs();
    const [, text] = samples(64 * K)[0];
    expect(await fallback.compressCluster(COMPRESSION_ZSTD, text)).toBeUndefined();
    if (!haveNative) return;
    const compressed = (await compressCluster(COMPRESSION_ZSTD, text))!;
    const out = new Uint8Array(64 * K);
    await fallback.decompressCluster(COMPRESSION_ZSTD, compressed, out);
    expect(out).toEqual(text);
    await expect(fallback.decompressCluster(COMPRESSION_ZSTD, compressed.subarray(0, 100), out)).rejects.toMatchObject({ code: 'EIO' });
  });
});
