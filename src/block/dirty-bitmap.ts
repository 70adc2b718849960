/**
 * A dirty bitmap in memory (QEMU's BdrvDirtyBitmap): one bit per `granularity` bytes of a
 * node, set by the writes the node takes while the bitmap is enabled. Bits are kept in the
 * order QEMU serializes them (bit i is bit i % 8 of byte i / 8), so a range of them is stored
 * and loaded as it is.
 */
import { BlkioError } from '../errors.js';

/** Default granularity: the cluster size, within 4 KiB..64 KiB (QEMU's bdrv_get_default_bitmap_granularity). */
export function defaultBitmapGranularity(clusterSize: number | undefined): number {
  return clusterSize ? Math.min(65536, Math.max(4096, clusterSize)) : 65536;
}

export class DirtyBitmap {
  private bits: Uint8Array;
  enabled = true;
  /** Stored in the image at close (qcow2). */
  persistent = false;
  /** Loaded from an image opened read-only: it may not change. */
  readonly = false;
  /** Found in use in the image: its bits are unknown, and it may only be removed. */
  inconsistent = false;

  constructor(
    readonly name: string,
    readonly granularity: number,
    /** Bytes of the node the bitmap covers. */
    public size: number,
  ) {
    this.bits = new Uint8Array(Math.ceil(this.bitCount / 8));
  }

  get bitCount(): number {
    return Math.ceil(this.size / this.granularity);
  }

  /** Mark `[offset, offset + bytes)` dirty (clamped to the bitmap). */
  set(offset: number, bytes: number): void {
    if (bytes <= 0) return;
    this.setBits(Math.floor(offset / this.granularity), Math.min(this.bitCount, Math.ceil((offset + bytes) / this.granularity)));
  }

  /** Set bits `[first, end)`: the whole bytes in between at once. */
  setBits(first: number, end: number): void {
    let i = first;
    for (; i < end && i % 8; i++) this.bits[i >> 3] |= 1 << (i & 7);
    const wholeEnd = end - (end % 8);
    if (i < wholeEnd) {
      this.bits.fill(0xff, i >> 3, wholeEnd >> 3);
      i = wholeEnd;
    }
    for (; i < end; i++) this.bits[i >> 3] |= 1 << (i & 7);
  }

  isSet(bit: number): boolean {
    return (this.bits[bit >> 3] >> (bit & 7) & 1) === 1;
  }

  clear(): void {
    this.bits.fill(0);
  }

  /** The first set bit at or after `from`, or -1. */
  nextSet(from: number): number {
    const bit = this.nextWith(from, true);
    return bit < this.bitCount ? bit : -1;
  }

  /** The first clear bit at or after `from` (bitCount when none). */
  nextClear(from: number): number {
    return this.nextWith(from, false);
  }

  /** The first bit at or after `from` that is `set` (bitCount when none); whole bytes of the other value are skipped. */
  private nextWith(from: number, set: boolean): number {
    const count = this.bitCount;
    const skippable = set ? 0 : 0xff;
    let i = from;
    while (i < count) {
      if (i % 8 === 0 && this.bits[i >> 3] === skippable) i += 8;
      else if (this.isSet(i) === set) break;
      else i++;
    }
    return Math.min(i, count);
  }

  /** Bits `[first, first + count)` as stored: whole bytes, bits past the range zero. */
  serialize(first: number, count: number): Uint8Array {
    if (first % 8) throw new Error('serialize: unaligned start');
    const out = this.bits.slice(first >> 3, (first + count + 7) >> 3);
    if (count % 8) out[out.length - 1] &= (1 << (count % 8)) - 1;
    return out;
  }

  /** Load bits `[first, first + count)` from their stored form. */
  deserialize(data: Uint8Array, first: number, count: number): void {
    if (first % 8) throw new Error('deserialize: unaligned start');
    this.bits.set(data.subarray(0, (count + 7) >> 3), first >> 3);
    const last = this.bitCount;
    if (last % 8 && first + count >= last) this.bits[this.bits.length - 1] &= (1 << (last % 8)) - 1;
  }

  /** Add every dirty area of `source` (QEMU's merge: sizes must match, granularities may not). */
  merge(source: DirtyBitmap): void {
    if (source.size !== this.size) {
      throw new BlkioError('EINVAL',
        `Bitmaps are of different sizes (destination size is ${this.size}, source size is ${source.size}) and can't be merged`);
    }
    for (let bit = source.nextSet(0); bit >= 0; bit = source.nextSet(bit)) {
      const end = source.nextClear(bit);
      this.set(bit * source.granularity, (end - bit) * source.granularity);
      bit = end;
    }
  }

  /** The node was resized: bits past the new end are dropped, new ones start clean. */
  resize(size: number): void {
    const bits = new Uint8Array(Math.ceil(Math.ceil(size / this.granularity) / 8));
    bits.set(this.bits.subarray(0, bits.length));
    this.size = size;
    this.bits = bits;
    const count = this.bitCount;
    if (count % 8) this.bits[this.bits.length - 1] &= (1 << (count % 8)) - 1;
  }
}

/** A write reached `[offset, offset + bytes)` of a node: every enabled bitmap of it records it. */
export function markDirty(bitmaps: readonly DirtyBitmap[], offset: number, bytes: number): void {
  for (const bitmap of bitmaps) if (bitmap.enabled) bitmap.set(offset, bytes);
}
