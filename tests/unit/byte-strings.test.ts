import { describe, expect, it } from 'vitest';
import { latin1CString } from '../../src/byte-strings.js';

describe('byte strings', () => {
  it('reads a fixed-size text field up to its NUL, a character a byte', () => {
    expect(latin1CString(Uint8Array.of(0x61, 0xe4, 0, 0x62))).toBe('a\u00e4');
    expect(latin1CString(Uint8Array.of(0x61, 0x62))).toBe('ab');
    expect(latin1CString(new Uint8Array(4))).toBe('');
  });
});
