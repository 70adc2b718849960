import { describe, expect, it } from 'vitest';
import { makeTable, set64 } from '../../../../src/drivers/qcow2/entries.js';
import { overlappingMetadata } from '../../../../src/drivers/qcow2/overlap.js';
import { updateMaxRefcountTableIndex } from '../../../../src/drivers/qcow2/refcount.js';
import type { Qcow2State } from '../../../../src/drivers/qcow2/state.js';

const CLUSTER = 0x10000;

/** A state with no L1 table or snapshots and a cluster-sized refcount table at 0x10000 pointing to `blocks`. */
function stateWithRefblocks(blocks: Record<number, number>): Qcow2State {
  const entries = CLUSTER / 8;
  const table = makeTable(new Uint8Array(entries * 8));
  for (const [index, offset] of Object.entries(blocks)) set64(table, Number(index), 0, offset);
  const s = {
    clusterSize: CLUSTER, l1TableOffset: 0, l1Size: 0, refcountTableOffset: CLUSTER, refcountTableSize: entries,
    refcountTable: table, maxRefcountTableIndex: 0, header: { snapshotsOffset: 0, autoclearFeatures: 0n }, snapshotsSize: 0, snapshots: [],
  } as unknown as Qcow2State;
  updateMaxRefcountTableIndex(s);
  return s;
}

describe('overlappingMetadata', () => {
  it('finds every refcount block, the last used table entry included', () => {
    const s = stateWithRefblocks({ 0: 2 * CLUSTER, 7: 9 * CLUSTER });
    expect(overlappingMetadata(s, 2 * CLUSTER, 512)).toBe('refcount block');
    expect(overlappingMetadata(s, 8 * CLUSTER, CLUSTER + 1)).toBe('refcount block');
    expect(overlappingMetadata(s, 10 * CLUSTER, 32 * CLUSTER)).toBeUndefined();
    expect(overlappingMetadata(s, 9 * CLUSTER, CLUSTER, 'refcount block')).toBeUndefined();
  });

  it('checks the refcount table itself and the header', () => {
    const s = stateWithRefblocks({ 0: 2 * CLUSTER });
    expect(overlappingMetadata(s, CLUSTER + 4096, 8)).toBe('refcount table');
    expect(overlappingMetadata(s, 0, 512)).toBe('qcow2_header');
  });

  it('checks the bitmap directory while the bitmaps autoclear bit is set, all of the file without a directory', () => {
    const s = stateWithRefblocks({ 0: 2 * CLUSTER });
    s.bitmapDirectory = { count: 1, offset: 5 * CLUSTER, size: 48 };
    expect(overlappingMetadata(s, 5 * CLUSTER + 4096, 8)).toBeUndefined();
    s.header.autoclearFeatures = 1n;
    expect(overlappingMetadata(s, 5 * CLUSTER + 4096, 8)).toBe('bitmap directory');
    expect(overlappingMetadata(s, 5 * CLUSTER, 8, 'bitmap directory')).toBeUndefined();
    expect(overlappingMetadata(s, 6 * CLUSTER, CLUSTER)).toBeUndefined();
    s.bitmapDirectory = undefined;
    expect(overlappingMetadata(s, 40 * CLUSTER, 512)).toBe('bitmap directory');
  });
});
