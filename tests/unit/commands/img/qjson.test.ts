import { describe, expect, it } from 'vitest';
import { toQemuJson } from '../../../../src/commands/img/qjson.js';

describe('toQemuJson', () => {
  it('orders members as QEMU QDicts do and indents by four', () => {
    const info = { filename: 'a.raw', format: 'raw', 'virtual-size': 1024, 'dirty-flag': false };
    expect(toQemuJson(info)).toBe('{\n    "virtual-size": 1024,\n    "filename": "a.raw",\n    "format": "raw",\n    "dirty-flag": false\n}');
  });

  it('escapes control and non-ASCII characters as \\uXXXX', () => {
    expect(toQemuJson(['a"b\\\n\u0001é'])).toBe('[\n    "a\\"b\\\\\\n\\u0001\\u00E9"\n]');
  });
});
