import { describe, expect, it } from 'vitest';
import {
  BITMAP_FLAG_AUTO, BITMAP_FLAG_IN_USE, bitmapTableSize, checkBitmapConstraints, decodeBitmapsExtension, dirEntrySize,
  encodeBitmapDirectory, encodeBitmapsExtension, encodeBitmapTable, isValidDirEntry, parseBitmapDirectory,
} from '../../../../src/drivers/qcow2/bitmaps.js';
import { AUTOCLEAR_BITMAPS } from '../../../../src/drivers/qcow2/header.js';

/** One directory entry as the qcow2 spec lays it out, padded to 8 bytes. */
function entry(tableOffset: number, tableSize: number, flags: number, granularityBits: number, name: string, extra = 0): Uint8Array {
  const nameBytes = new TextEncoder().encode(name);
  const size = Math.ceil((24 + extra + nameBytes.length) / 8) * 8;
  const bytes = new Uint8Array(size);
  const v = new DataView(bytes.buffer);
  v.setBigUint64(0, BigInt(tableOffset));
  v.setUint32(8, tableSize);
  v.setUint32(12, flags);
  v.setUint8(16, 1);
  v.setUint8(17, granularityBits);
  v.setUint16(18, nameBytes.length);
  v.setUint32(20, extra);
  bytes.set(nameBytes, 24 + extra);
  return bytes;
}

describe('parseBitmapDirectory', () => {
  it('reads name and extra data sizes from bytes 18 and 20 of each entry', () => {
    const first = entry(0x30000, 1, 2, 16, 'first');
    const second = entry(0x50000, 3, 3, 17, 'a-longer-name', 8);
    const directory = new Uint8Array(first.length + second.length);
    directory.set(first);
    directory.set(second, first.length);
    expect(parseBitmapDirectory(directory, 2)).toEqual([
      { tableOffset: 0x30000, tableSize: 1, flags: 2, granularityBits: 16, name: 'first' },
      { tableOffset: 0x50000, tableSize: 3, flags: 3, granularityBits: 17, name: 'a-longer-name' },
    ]);
  });

  it('stops at entries that overrun the directory', () => {
    expect(parseBitmapDirectory(entry(0x30000, 1, 0, 16, 'x'), 2)).toHaveLength(1);
  });

  it('keeps the bytes of a name: a leading BOM stays', () => {
    expect(parseBitmapDirectory(entry(0x30000, 1, 0, 16, '\ufeffbm'), 1)[0].name).toBe('\ufeffbm');
  });
});

describe('encodeBitmapDirectory', () => {
  it('writes entries as the spec lays them out, type 1 and no extra data, each padded to 8 bytes', () => {
    const entries = [
      { tableOffset: 0x40000, tableSize: 1, flags: BITMAP_FLAG_AUTO, granularityBits: 16, name: 'b1' },
      { tableOffset: 0x70000, tableSize: 2, flags: BITMAP_FLAG_IN_USE, granularityBits: 9, name: 'a-longer-name' },
    ];
    const dir = encodeBitmapDirectory(entries);
    expect(dir).toEqual(concat(entry(0x40000, 1, 2, 16, 'b1'), entry(0x70000, 2, 1, 9, 'a-longer-name')));
    expect(dir.length).toBe(dirEntrySize('b1') + dirEntrySize('a-longer-name'));
    expect(parseBitmapDirectory(dir, 2)).toEqual(entries);
  });
});

describe('isValidDirEntry', () => {
  const valid = { tableOffset: 0x40000, tableSize: 1, flags: 0, granularityBits: 16, name: 'b', type: 1, extraDataSize: 0 };
  const cluster = 65536;

  it('takes what QEMU stores', () => {
    expect(isValidDirEntry(valid, 64 * 2 ** 20, cluster)).toBe(true);
  });

  it('refuses an unaligned or missing table, reserved flags, granularities out of 512..2G, other types', () => {
    for (const bad of [
      { tableOffset: 0 }, { tableOffset: 0x40200 }, { tableSize: 0 }, { flags: 4 }, { granularityBits: 8 },
      { granularityBits: 32 }, { type: 2 },
    ]) {
      expect(isValidDirEntry({ ...valid, ...bad }, 64 * 2 ** 20, cluster)).toBe(false);
    }
  });

  it('refuses a consistent bitmap whose table is too small for the image, not an inconsistent one', () => {
    // One cluster of bits at 512 bytes each covers 256 MiB.
    const small = { ...valid, granularityBits: 9 };
    expect(isValidDirEntry(small, 256 * 2 ** 20, cluster)).toBe(true);
    expect(isValidDirEntry(small, 256 * 2 ** 20 + 512, cluster)).toBe(false);
    expect(isValidDirEntry({ ...small, flags: BITMAP_FLAG_IN_USE }, 256 * 2 ** 20 + 512, cluster)).toBe(true);
  });
});

describe('bitmap tables and constraints', () => {
  it('sizes a table by the clusters of bits the image needs', () => {
    expect(bitmapTableSize(64 * 2 ** 20, 65536, 65536)).toBe(1);
    expect(bitmapTableSize(256 * 2 ** 20 + 1, 512, 65536)).toBe(2);
    expect(bitmapTableSize(2 ** 21, 512, 512)).toBe(1);
    expect(bitmapTableSize(2 ** 21 + 512, 512, 512)).toBe(2);
  });

  it('encodes data cluster offsets big-endian, 0 for clean clusters', () => {
    expect([...encodeBitmapTable([0x50000, 0])]).toEqual([0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('checks granularity, size and name length with QEMU texts', () => {
    expect(() => checkBitmapConstraints('b', 256, 2 ** 20, 65536)).toThrow('Granularity is under minimum (512 bytes)');
    expect(() => checkBitmapConstraints('b', 2 ** 32, 2 ** 20, 65536)).toThrow('Granularity exceeds maximum (2147483648 bytes)');
    expect(() => checkBitmapConstraints('b', 512, 2 ** 52, 65536)).toThrow('Too much space will be occupied by the bitmap. Use larger granularity');
    expect(() => checkBitmapConstraints('n'.repeat(1024), 512, 2 ** 20, 65536)).toThrow('Name length exceeds maximum (1023 characters)');
    expect(() => checkBitmapConstraints('n'.repeat(1023), 512, 2 ** 20, 65536)).not.toThrow();
  });

  it('round-trips the bitmaps extension', () => {
    const location = { count: 2, size: 64, offset: 0xd0000 };
    expect(decodeBitmapsExtension(encodeBitmapsExtension(location), AUTOCLEAR_BITMAPS)).toEqual(location);
    // Without the autoclear bit the bitmaps are ignored.
    expect(decodeBitmapsExtension(encodeBitmapsExtension(location), 0n)).toBeUndefined();
  });
});

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}
