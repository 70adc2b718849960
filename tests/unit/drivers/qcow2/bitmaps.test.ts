import { describe, expect, it } from 'vitest';
import { parseBitmapDirectory } from '../../../../src/drivers/qcow2/bitmaps.js';

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
});
