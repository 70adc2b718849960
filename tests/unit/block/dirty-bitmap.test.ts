import { describe, expect, it } from 'vitest';
import { defaultBitmapGranularity, DirtyBitmap, markDirty } from '../../../src/block/dirty-bitmap.js';

function setBits(b: DirtyBitmap): number[] {
  const bits: number[] = [];
  for (let i = b.nextSet(0); i >= 0; i = b.nextSet(i + 1)) bits.push(i);
  return bits;
}

describe('DirtyBitmap', () => {
  it('marks every granule a byte range touches', () => {
    const b = new DirtyBitmap('b', 512, 64 * 1024);
    b.set(0, 1);
    b.set(1023, 2);
    b.set(4096, 4096);
    expect(setBits(b)).toEqual([0, 1, 2, 8, 9, 10, 11, 12, 13, 14, 15]);
    expect(b.nextClear(8)).toBe(16);
  });

  it('fills whole bytes for long ranges and clamps at its end', () => {
    const b = new DirtyBitmap('b', 512, 100 * 512);
    b.set(3 * 512, 1e9);
    expect(setBits(b)).toEqual(Array.from({ length: 97 }, (_, i) => i + 3));
  });

  it('serializes bit i as bit i % 8 of byte i / 8, bits past the range zero', () => {
    const b = new DirtyBitmap('b', 512, 64 * 512);
    b.setBits(0, 64);
    expect([...b.serialize(8, 12)]).toEqual([0xff, 0x0f]);
    const c = new DirtyBitmap('c', 512, 64 * 512);
    c.deserialize(Uint8Array.of(0x81, 0x01), 16, 9);
    expect(setBits(c)).toEqual([16, 23, 24]);
  });

  it('merges dirty areas across granularities, only bitmaps of the same size', () => {
    const fine = new DirtyBitmap('f', 512, 2 ** 20);
    fine.set(70000, 1);
    const coarse = new DirtyBitmap('c', 65536, 2 ** 20);
    coarse.merge(fine);
    expect(setBits(coarse)).toEqual([1]);
    fine.merge(coarse);
    expect(setBits(fine)).toEqual(Array.from({ length: 128 }, (_, i) => i + 128));
    expect(() => fine.merge(new DirtyBitmap('x', 512, 2 ** 19))).toThrow(
      "Bitmaps are of different sizes (destination size is 1048576, source size is 524288) and can't be merged");
  });

  it('drops bits past a shrunk end and starts grown areas clean', () => {
    const b = new DirtyBitmap('b', 512, 8192);
    b.setBits(0, 16);
    b.resize(3 * 512);
    b.resize(8192);
    expect(setBits(b)).toEqual([0, 1, 2]);
  });

  it('markDirty skips disabled bitmaps', () => {
    const on = new DirtyBitmap('on', 512, 4096);
    const off = new DirtyBitmap('off', 512, 4096);
    off.enabled = false;
    markDirty([on, off], 512, 512);
    expect(setBits(on)).toEqual([1]);
    expect(setBits(off)).toEqual([]);
  });

  it('defaults to the cluster size within 4 KiB..64 KiB', () => {
    expect([512, 4096, 65536, 2 ** 21, undefined].map(defaultBitmapGranularity)).toEqual([4096, 4096, 65536, 65536, 65536]);
  });
});
