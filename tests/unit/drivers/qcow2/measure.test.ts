import { describe, expect, it } from 'vitest';
import { fullyAllocatedSize, measureImage } from '../../../../src/drivers/qcow2/measure.js';
import type { MeasureSource } from '../../../../src/block/driver.js';
import { STATUS_ALLOCATED, STATUS_DATA, STATUS_ZERO } from '../../../../src/block/flags.js';
import type { BlockNode } from '../../../../src/block/node.js';

const G = 2 ** 30;

/** A source of `length` bytes whose block status answers from a list of runs. */
function sourceOf(length: number, runs: Array<[number, number, number]>): MeasureSource {
  const node = { getLength: () => length, driver: {} } as unknown as BlockNode;
  return {
    node,
    async chainStatus(offset) {
      const [start, bytes, status] = runs.find(([s, b]) => offset >= s && offset < s + b)!;
      return { status, pnum: start + bytes - offset };
    },
  };
}

describe('qcow2 measure arithmetic (figures from qemu-img 7.2)', () => {
  it('counts header, L1, L2 and refcount clusters around the data', () => {
    expect(fullyAllocatedSize(G, 65536, 4, false)).toBe(1074135040);
    expect(fullyAllocatedSize(1, 65536, 4, false)).toBe(393216);
    expect(fullyAllocatedSize(0, 65536, 4, false)).toBe(196608);
    expect(fullyAllocatedSize(100 * G, 4096, 0, false)).toBe(107587604480);
    expect(fullyAllocatedSize(1024 * G, 65536, 4, true)).toBe(1099813879808);
  });

  it('needs only metadata for an empty image, everything when preallocated', async () => {
    expect(await measureImage({ size: G }, undefined)).toEqual({ required: 393216, fullyAllocated: 1074135040 });
    expect(await measureImage({ size: G, preallocation: 'falloc' }, undefined)).toEqual({ required: 1074135040, fullyAllocated: 1074135040 });
  });

  it('counts the clusters a source has data in, skipping zeroes and holes', async () => {
    const M = 2 ** 20;
    const K = 1024;
    // A 64k-cluster qcow2 image after writes of 100k at 0, zeroes at 1M and 512 bytes at 3M.
    const source = sourceOf(64 * M, [
      [0, 128 * K, STATUS_DATA | STATUS_ALLOCATED],
      [128 * K, M - 128 * K, 0],
      [M, M, STATUS_ZERO | STATUS_ALLOCATED],
      [2 * M, M, 0],
      [3 * M, 64 * K, STATUS_DATA | STATUS_ALLOCATED],
      [3 * M + 64 * K, 61 * M - 64 * K, 0],
    ]);
    // A short data run at 100k counts to the end of its cluster.
    const unaligned = sourceOf(M, [[0, 100 * K, STATUS_DATA | STATUS_ALLOCATED], [100 * K, M - 100 * K, 0]]);
    expect((await measureImage({ cluster_size: 4096 }, unaligned)).required - fullyAllocatedSize(M, 4096, 4, false) + M).toBe(100 * K);
    expect(await measureImage({}, source)).toEqual({ required: 524288, fullyAllocated: 67436544 });
    expect(await measureImage({ cluster_size: 4096 }, source)).toEqual({ required: 376832, fullyAllocated: 67289088 });
    expect((await measureImage({ backing_file: 'b' }, source)).required).toBe(67436544);
  });

  it('refuses sizes whose L1 table would be too large, with QEMU texts for bad options', async () => {
    await expect(measureImage({ size: 2 ** 60 }, undefined)).rejects.toThrow('The image size is too large (try using a larger cluster size)');
    await expect(measureImage({ size: G, compat: 'v3' }, undefined)).rejects.toThrow("Invalid compatibility level: 'v3'");
    await expect(measureImage({ size: G, preallocation: 'x' }, undefined)).rejects.toThrow('invalid parameter value: x');
  });
});
