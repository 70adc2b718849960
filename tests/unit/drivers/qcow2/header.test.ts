import { describe, expect, it } from 'vitest';
import { decodeFeatureTable, encodeFeatureTable } from '../../../../src/drivers/qcow2/header.js';

describe('qcow2 header fields', () => {
  it('reads the feature name table up to its first unnamed entry', () => {
    const long = 'x'.repeat(46);
    const table = encodeFeatureTable([{ type: 0, bit: 1, name: 'dirty' }, { type: 1, bit: 0, name: long }]);
    const withEnd = new Uint8Array(table.length + 96);
    withEnd.set(table);
    withEnd.set(encodeFeatureTable([{ type: 2, bit: 3, name: 'after' }]), table.length + 48);
    expect(decodeFeatureTable(withEnd)).toEqual([{ type: 0, bit: 1, name: 'dirty' }, { type: 1, bit: 0, name: long }]);
  });
});
