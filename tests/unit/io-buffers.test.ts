/** Page-aligned I/O buffers and the zero-sector scan: native (with the addon) and pure JS alike. */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ADDON_PATH } from '../../src/native-addon.js';

type IoBuffers = typeof import('../../src/io-buffers.js');

const addonFile = join(__dirname, '../..', ADDON_PATH);
// CI builds the addon (npm ci): there it must be tested; elsewhere a machine may lack a compiler.
const haveAddon = process.env.BLKIO_NO_NATIVE !== '1' && (existsSync(addonFile) || process.env.CI === 'true');

async function load(native: boolean): Promise<IoBuffers> {
  vi.stubEnv('BLKIO_NO_NATIVE', native ? '0' : '1');
  vi.resetModules();
  return import('../../src/io-buffers.js');
}

/** 512-byte sectors: 'D' holds one non-zero byte at `at` (default: the middle), '0' is all zero. */
function sectors(pattern: string, at = 256): Uint8Array {
  const buf = new Uint8Array(pattern.length * 512);
  [...pattern].forEach((c, i) => {
    if (c === 'D') buf[i * 512 + at] = 1;
  });
  return buf;
}

afterEach(() => {
  vi.unstubAllEnvs();
  vi.resetModules();
});

describe.each(haveAddon ? [true, false] : [false])('io buffers (native: %s)', (native) => {
  it('gives zeroed buffers of the size asked, page-aligned with the addon', async () => {
    const { ioBuffer } = await load(native);
    const addon = createRequire(import.meta.url)(addonFile) as { addressRemainder(b: Uint8Array, m: number): number };
    for (const size of [512, 65536, 2 * 1024 * 1024]) {
      const buf = ioBuffer(size);
      expect(buf.length).toBe(size);
      expect(buf.every((b) => b === 0)).toBe(true);
      if (native) expect(addon.addressRemainder(buf, 4096)).toBe(0);
    }
  });

  it('tells where a buffer lies in memory only with the addon (O_DIRECT needs it)', async () => {
    const { canAlignBuffers, ioBuffer, isAlignedInMemory } = await load(native);
    const buf = ioBuffer(8192);
    expect(canAlignBuffers()).toBe(native);
    expect(isAlignedInMemory(buf, 4096)).toBe(true);
    expect(isAlignedInMemory(buf.subarray(512), 512)).toBe(true);
    expect(isAlignedInMemory(buf.subarray(512), 4096)).toBe(!native);
    expect(isAlignedInMemory(buf.subarray(1), 512)).toBe(!native);
  });

  it('finds where a run of zero or data sectors ends', async () => {
    const { sectorRunEnd } = await load(native);
    const buf = sectors('DD000D0');
    expect(sectorRunEnd(buf, 0, 7, false)).toBe(2);
    expect(sectorRunEnd(buf, 2, 7, true)).toBe(5);
    expect(sectorRunEnd(buf, 5, 7, false)).toBe(6);
    expect(sectorRunEnd(buf, 6, 7, true)).toBe(7);
    expect(sectorRunEnd(buf, 3, 3, true)).toBe(3);
    expect(sectorRunEnd(buf, 2, 4, true)).toBe(4);
  });

  it('sees data in any byte of a sector, and long zero runs', async () => {
    const { sectorRunEnd } = await load(native);
    for (const at of [0, 1, 255, 504, 510, 511]) {
      expect(sectorRunEnd(sectors('0D', at), 0, 2, true)).toBe(1);
      expect(sectorRunEnd(sectors('D0', at), 0, 2, false)).toBe(1);
    }
    const long = sectors(`${'0'.repeat(300)}D${'0'.repeat(9)}`, 7);
    expect(sectorRunEnd(long, 0, 310, true)).toBe(300);
    expect(sectorRunEnd(long, 301, 310, true)).toBe(310);
  });

  it('finds where big-endian 64-bit entries stop stepping evenly, carrying into the high word', async () => {
    const { steppedRunEnd } = await load(native);
    const entries = (...values: bigint[]): Uint8Array => {
      const buf = new Uint8Array(values.length * 8);
      values.forEach((v, i) => new DataView(buf.buffer).setBigUint64(i * 8, v));
      return buf;
    };
    const copied = 1n << 63n;
    // qcow2 L2 entries (COPIED, 64 KiB clusters) across the 4 GiB boundary of the low word.
    const l2 = entries(copied | 0xfffe0000n, copied | 0xffff0000n, copied | 0x100000000n, copied | 0x100010000n, 0x100020000n, 0n, 0n);
    expect(steppedRunEnd(l2, 0, 7, 0x10000)).toBe(4);
    expect(steppedRunEnd(l2, 0, 2, 0x10000)).toBe(2);
    expect(steppedRunEnd(l2, 3, 7, 0x10000)).toBe(4);
    expect(steppedRunEnd(l2, 5, 7, 0)).toBe(7);
    expect(steppedRunEnd(l2, 6, 7, 0)).toBe(7);
    expect(steppedRunEnd(entries(5n, 5n, 6n), 0, 3, 0)).toBe(2);
    expect(steppedRunEnd(entries(0xffffffffffffffffn, 0xffffffffffffffffn), 0, 2, 0)).toBe(2);
  });

  it('fills big-endian 64-bit entries that step evenly, carrying into the high word', async () => {
    const { fillSteppedRun } = await load(native);
    const buf = new Uint8Array(6 * 8).fill(0xee);
    // COPIED qcow2 L2 entries of 64 KiB clusters across the 4 GiB boundary of the low word.
    fillSteppedRun(buf, 1, 5, 0x80000000, 0xfffe0000, 0x10000);
    const view = new DataView(buf.buffer);
    const copied = 1n << 63n;
    expect(Array.from({ length: 6 }, (_, i) => view.getBigUint64(i * 8))).toEqual([
      0xeeeeeeeeeeeeeeeen, copied | 0xfffe0000n, copied | 0xffff0000n, copied | 0x100000000n, copied | 0x100010000n,
      0xeeeeeeeeeeeeeeeen,
    ]);
    fillSteppedRun(buf, 2, 2, 0, 0, 0x10000);
    expect(view.getBigUint64(16)).toBe(copied | 0xffff0000n);
  });
});

describe.runIf(haveAddon)('native buffer helpers', () => {
  it('refuse what is not a Uint8Array or a sector range outside the buffer', () => {
    const addon = createRequire(import.meta.url)(addonFile) as {
      addressRemainder(b: unknown, m?: unknown): number;
      sectorRunEnd(b: unknown, from: unknown, to: unknown, zero: unknown): number;
      steppedRunEnd(b: unknown, from: unknown, to: unknown, step: unknown): number;
      fillSteppedRun(b: unknown, from: unknown, to: unknown, hi: unknown, lo: unknown, step: unknown): void;
    };
    const buf = new Uint8Array(1024);
    expect(() => addon.sectorRunEnd(new Uint16Array(512), 0, 1, true)).toThrow(TypeError);
    expect(() => addon.sectorRunEnd(buf, 0, 3, true)).toThrow(RangeError);
    expect(() => addon.sectorRunEnd(buf, 2, 1, true)).toThrow(RangeError);
    expect(() => addon.sectorRunEnd(buf, 0, 1, 1)).toThrow(TypeError);
    expect(() => addon.addressRemainder(buf, 0)).toThrow(RangeError);
    expect(() => addon.addressRemainder(buf, 1.5)).toThrow(new TypeError('modulus must be an integer'));
    expect(() => addon.addressRemainder(buf)).toThrow(new TypeError('missing arguments'));
    expect(() => addon.addressRemainder({}, 4096)).toThrow(TypeError);
    expect(addon.addressRemainder(buf.subarray(1), 1)).toBe(0);
    expect(() => addon.steppedRunEnd(buf, 0, 129, 0)).toThrow(RangeError);
    expect(() => addon.steppedRunEnd(buf, 1, 1, 0)).toThrow(RangeError);
    expect(() => addon.steppedRunEnd(buf, 0, 1, -1)).toThrow(RangeError);
    expect(() => addon.steppedRunEnd(new Uint32Array(2), 0, 1, 0)).toThrow(TypeError);
    expect(() => addon.fillSteppedRun(buf, 0, 129, 0, 0, 0)).toThrow(RangeError);
    expect(() => addon.fillSteppedRun(buf, 2, 1, 0, 0, 0)).toThrow(RangeError);
    expect(() => addon.fillSteppedRun(buf, 0, 1, 2 ** 32, 0, 0)).toThrow(RangeError);
    expect(() => addon.fillSteppedRun(buf, 0, 1, 0, 0, -1)).toThrow(RangeError);
  });
});
