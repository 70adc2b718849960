import { describe, expect, it } from 'vitest';
import { hostPath, latin1CString, qemuStringBytes } from '../../src/byte-strings.js';

describe('byte strings', () => {
  it('reads a fixed-size text field up to its NUL, a character a byte', () => {
    expect(latin1CString(Uint8Array.of(0x61, 0xe4, 0, 0x62))).toBe('a\u00e4');
    expect(latin1CString(Uint8Array.of(0x61, 0x62))).toBe('ab');
    expect(latin1CString(new Uint8Array(4))).toBe('');
  });

  it('gives U+0000 (a JSON \\u0000) as C0 80, the rest as UTF-8', () => {
    expect([...qemuStringBytes('a\0\u00e4\0')]).toEqual([0x61, 0xc0, 0x80, 0xc3, 0xa4, 0xc0, 0x80]);
    expect([...qemuStringBytes('ab')]).toEqual([0x61, 0x62]);
    expect(hostPath('a.raw')).toBe('a.raw');
    expect([...(hostPath('\0') as Buffer)]).toEqual([0xc0, 0x80]);
  });
});
