import { describe, expect, it } from 'vitest';
import { crc32c, crc32cFinish, crc32cUpdate, CRC32C_INITIAL } from '../../src/crc32c.js';

describe('crc32c', () => {
  it('gives the check value of the Castagnoli CRC', () => {
    expect(crc32c(new TextEncoder().encode('123456789'))).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });

  it('agrees with the byte-wise definition on every length and alignment', () => {
    const bytes = Uint8Array.from({ length: 4099 }, (_, i) => (i * 7 + 3) & 0xff);
    const bytewise = (b: Uint8Array): number => {
      let c = 0xffffffff;
      for (const x of b) {
        c ^= x;
        for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
      }
      return (c ^ 0xffffffff) >>> 0;
    };
    for (const [start, end] of [[0, 4099], [3, 1000], [1, 8], [5, 12], [0, 1]] as const) {
      expect(crc32c(bytes.subarray(start, end))).toBe(bytewise(bytes.subarray(start, end)));
    }
  });

  it('chains over pieces as over the whole', () => {
    const bytes = Uint8Array.from({ length: 10000 }, (_, i) => (i * 13) & 0xff);
    const chained = crc32cFinish(crc32cUpdate(crc32cUpdate(CRC32C_INITIAL, bytes.subarray(0, 4097)), bytes.subarray(4097)));
    expect(chained).toBe(crc32c(bytes));
  });

  it('matches a known 64 KiB value', () => {
    const bytes = Uint8Array.from({ length: 65536 }, (_, i) => (i * 7 + 3) & 0xff);
    expect(crc32c(bytes)).toBe(0x70861406);
    expect(crc32c(bytes.subarray(3, 1000))).toBe(0x4cb9dbe8);
  });
});
