/** Rounding to alignments: multiples stay, others go to the next (or previous) one, exact up to 2^53. */
import { describe, expect, it } from 'vitest';
import { roundDown, roundUp } from '../../src/arithmetic.js';

describe('roundUp / roundDown', () => {
  it('leave multiples alone', () => {
    expect(roundUp(0, 512)).toBe(0);
    expect(roundUp(65536, 512)).toBe(65536);
    expect(roundDown(65536, 512)).toBe(65536);
  });

  it('round to the next and the previous multiple', () => {
    expect(roundUp(1, 512)).toBe(512);
    expect(roundUp(513, 512)).toBe(1024);
    expect(roundDown(1023, 512)).toBe(512);
    // Alignments need not be powers of two (prealloc-align=1536).
    expect(roundUp(1537, 1536)).toBe(3072);
    expect(roundDown(3071, 1536)).toBe(1536);
  });

  it('stay exact for the largest safe integers', () => {
    // 2^53 - 1 = 6361 * 69431 * 20394401
    const max = Number.MAX_SAFE_INTEGER;
    expect(roundUp(max - 1, 6361)).toBe(max);
    expect(roundDown(max - 1, 6361)).toBe(max - 6361);
  });
});
