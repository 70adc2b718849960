import { describe, expect, it } from 'vitest';
import { decodeFeatureTable, encodeFeatureTable, latin1CString } from '../../../../src/drivers/qcow2/header.js';

describe('qcow2 header fields', () => {
  it('reads a fixed-size text field up to its NUL, a character a byte', () => {
    expect(latin1CString(Uint8Array.of(0x61, 0xe4, 0, 0x62))).toBe('a\u00e4');
    expect(latin1CString(Uint8Array.of(0x61, 0x62))).toBe('ab');
    expect(latin1CString(new Uint8Array(4))).toBe('');
  });

  it('reads the feature name table up to its first unnamed entry', () => {
    const long = 'x'.repeat(46);
    const table = encodeFeatureTable([{ type: 0, bit: 1, name: 'dirty' }, { type: 1, bit: 0, name: long }]);
    const withEnd = new Uint8Array(table.length + 96);
    withEnd.set(table);
    withEnd.set(encodeFeatureTable([{ type: 2, bit: 3, name: 'after' }]), table.length + 48);
    expect(decodeFeatureTable(withEnd)).toEqual([{ type: 0, bit: 1, name: 'dirty' }, { type: 1, bit: 0, name: long }]);
  });
});
