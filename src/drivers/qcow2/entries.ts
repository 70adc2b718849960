/**
 * Table entries: L1, L2 (standard and extended) and refcount table entries are 64-bit
 * big-endian words kept in their on-disk byte form; these helpers read them as two 32-bit
 * halves so offsets stay plain numbers and flag bits stay exact.
 */

/** A table as stored: raw bytes plus a view over them. */
export interface Table {
  data: Uint8Array;
  view: DataView;
}

export function makeTable(data: Uint8Array): Table {
  return { data, view: new DataView(data.buffer, data.byteOffset, data.byteLength) };
}

const TWO32 = 0x100000000;

/** Bit 63 of L1/L2 entries: refcount is exactly one, the cluster may be written in place. */
export const HI_COPIED = 0x80000000;
/** Bit 62 of L2 entries: compressed cluster descriptor. */
export const HI_COMPRESSED = 0x40000000;
/** Bit 0 of standard L2 entries: reads as zeroes. */
export const LO_ZERO = 1;

/** Bits 9-55: the host offset of L1/L2 entries. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
}

export function splitOffset(offset: number): [hi: number, lo: number] {
  return [Math.floor(offset / TWO32) >>> 0, offset % TWO32 >>> 0];
}

/** Reserved bits of an L1 entry (1-8 and 56-62). */
export function l1Reserved(hi: number, lo: number): boolean {
  return (hi & 0x7f000000) !== 0 || (lo & 0x1ff) !== 0;
}

/** Reserved bits of a standard L2 descriptor (1-8 and 56-61). */
export function l2StdReserved(hi: number, lo: number): boolean {
  return (hi & 0x3f000000) !== 0 || (lo & 0x1fe) !== 0;
}

export function hex64(hi: number, lo: number): string {
  return ((BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0)).toString(16);
}

// L1 table and refcount table: 8-byte entries.

export function getHi(t: Table, index: number): number {
  return t.view.getUint32(index * 8);
}

export function getLo(t: Table, index: number): number {
  return t.view.getUint32(index * 8 + 4);
}

export function set64(t: Table, index: number, hi: number, lo: number): void {
  t.view.setUint32(index * 8, hi >>> 0);
  t.view.setUint32(index * 8 + 4, lo >>> 0);
}

/** Refcount table entry: bits 9-63 are the refblock offset, 0-8 reserved. */
export function reftableOffset(t: Table, index: number): number {
  return getHi(t, index) * TWO32 + ((getLo(t, index) & 0xfffffe00) >>> 0);
}

export function reftableReserved(t: Table, index: number): boolean {
  return (getLo(t, index) & 0x1ff) !== 0;
}

export function setReftableOffset(t: Table, index: number, offset: number): void {
  const [hi, lo] = splitOffset(offset);
  set64(t, index, hi, lo);
}

// Refcounts of width 1 << order bits; sub-byte widths are packed from the low bit up.

export function getRefcount(t: Table, order: number, index: number): number {
  switch (order) {
    case 0: return (t.data[index >>> 3] >>> (index & 7)) & 1;
    case 1: return (t.data[index >>> 2] >>> (2 * (index & 3))) & 3;
    case 2: return (t.data[index >>> 1] >>> (4 * (index & 1))) & 15;
    case 3: return t.data[index];
    case 4: return t.view.getUint16(index * 2);
    case 5: return t.view.getUint32(index * 4);
    default: return t.view.getUint32(index * 8) * TWO32 + t.view.getUint32(index * 8 + 4);
  }
}

export function setRefcount(t: Table, order: number, index: number, value: number): void {
  switch (order) {
    case 0: case 1: case 2: {
      const bits = 1 << order;
      const perByte = 8 >>> order;
      const byte = Math.floor(index / perByte);
      const shift = (index % perByte) * bits;
      const mask = ((1 << bits) - 1) << shift;
      t.data[byte] = (t.data[byte] & ~mask) | ((value << shift) & mask);
      return;
    }
    case 3: t.data[index] = value; return;
    case 4: t.view.setUint16(index * 2, value); return;
    case 5: t.view.setUint32(index * 4, value); return;
    default:
      t.view.setUint32(index * 8, Math.floor(value / TWO32));
      t.view.setUint32(index * 8 + 4, value % TWO32);
  }
}

/** Largest refcount a width can hold (2^64-1 is beyond what a number keeps exactly, which is harmless). */
export function refcountMax(order: number): number {
  return 2 ** (1 << order) - 1;
}
