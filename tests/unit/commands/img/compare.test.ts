import { describe, expect, it } from 'vitest';
import { findNonZero } from '../../../../src/commands/img/compare.js';

describe('findNonZero', () => {
  it('returns -1 for an all-zero buffer', () => {
    expect(findNonZero(new Uint8Array(1500))).toBe(-1);
  });

  it('names the start of the sector holding the first non-zero byte, as qemu-img compare reports it', () => {
    const buf = new Uint8Array(200 * 1024);
    buf[70000] = 1;
    expect(findNonZero(buf)).toBe(70000 - (70000 % 512));
  });

  it('names the start of a trailing partial sector', () => {
    const buf = new Uint8Array(1100);
    buf[1050] = 7;
    expect(findNonZero(buf)).toBe(1024);
  });
});
