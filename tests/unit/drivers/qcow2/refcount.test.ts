import { describe, expect, it } from 'vitest';
import { makeTable, set64, setRefcount } from '../../../../src/drivers/qcow2/entries.js';
import { countReferencedClusters, updateMaxRefcountTableIndex } from '../../../../src/drivers/qcow2/refcount.js';
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

describe('countReferencedClusters', () => {
  /** A state with one cached refcount block of 512 bytes at 0x10000, the refcounts `set` (index -> value). */
  function stateWith(order: number, set: Record<number, number>, byteOffset = 0): Qcow2State {
    const block = makeTable(new Uint8Array(512 + byteOffset).subarray(byteOffset));
    for (const [index, value] of Object.entries(set)) setRefcount(block, order, Number(index), value);
    const refcountTable = makeTable(new Uint8Array(8));
    set64(refcountTable, 0, 0, 0x10000);
    return {
      refcountOrder: order, refcountBlockSize: (512 * 8) >> order, refcountTable, refcountTableSize: 1, clusterSize: 512,
      refcountCache: { get: async () => block, put: () => {} },
    } as unknown as Qcow2State;
  }

  it('counts the non-zero refcounts of every width, up to `end`, at most `limit`', async () => {
    for (let order = 0; order <= 6; order++) {
      const max = order === 6 ? 2 ** 53 - 1 : 2 ** (2 ** order) - 1;
      const blockSize = (512 * 8) >> order;
      // The highest and the lowest bit of a refcount, the first and last entries, a gap.
      const s = stateWith(order, { 0: 1, 1: max, 3: 1, [blockSize - 1]: max });
      expect(await countReferencedClusters(s, blockSize, Infinity), `order ${order}`).toBe(4);
      expect(await countReferencedClusters(s, 3, Infinity), `order ${order}`).toBe(2);
      expect(await countReferencedClusters(s, blockSize, 3), `order ${order}`).toBe(3);
    }
  });

  it('counts refcounts of a block that does not start on a word boundary', async () => {
    const s = stateWith(4, { 0: 1, 5: 0x100, 255: 2 }, 2);
    expect(await countReferencedClusters(s, 256, Infinity)).toBe(3);
  });
});
