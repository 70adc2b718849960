import { describe, expect, it } from 'vitest';
import { makeTable, set64 } from '../../../../src/drivers/qcow2/entries.js';
import { updateMaxRefcountTableIndex } from '../../../../src/drivers/qcow2/refcount.js';
import type { Qcow2State } from '../../../../src/drivers/qcow2/state.js';

/** The index updateMaxRefcountTableIndex finds in a table of `size` entries, `entries` set (index -> [hi, lo]). */
function lastUsedIndex(size: number, entries: Record<number, [number, number]>): number {
  const table = makeTable(new Uint8Array(size * 8));
  for (const [index, [hi, lo]] of Object.entries(entries)) set64(table, Number(index), hi, lo);
  const s = { refcountTable: table, refcountTableSize: size, maxRefcountTableIndex: -1 } as unknown as Qcow2State;
  updateMaxRefcountTableIndex(s);
  return s.maxRefcountTableIndex;
}

describe('updateMaxRefcountTableIndex', () => {
  it('finds the last entry that points to a refblock, wherever it lies in a large table', () => {
    expect(lastUsedIndex(8192, { 0: [0, 0x10000] })).toBe(0);
    expect(lastUsedIndex(8192, { 0: [0, 0x10000], 8191: [0, 0x20000] })).toBe(8191);
    expect(lastUsedIndex(8192, { 0: [0, 0x10000], 4096: [1, 0] })).toBe(4096);
    expect(lastUsedIndex(8192, { 0: [0, 0x10000], 4095: [0, 0x30000] })).toBe(4095);
    expect(lastUsedIndex(8192, { 63: [0, 0x10000] })).toBe(63);
    expect(lastUsedIndex(100, { 70: [0, 0x10000] })).toBe(70);
  });

  it('gives 0 for an empty table and ignores entries holding only reserved bits', () => {
    expect(lastUsedIndex(8192, {})).toBe(0);
    expect(lastUsedIndex(8192, { 10: [0, 0x10000], 5000: [0, 0x1ff] })).toBe(10);
    expect(lastUsedIndex(1, {})).toBe(0);
  });
});
