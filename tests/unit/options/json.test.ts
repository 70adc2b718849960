import { describe, expect, it } from 'vitest';
import { BlkioError } from '../../../src/errors.js';
import {
  extractPrefix, flattenTree, isJsonFilename, parseJsonFilename, parseQemuJson, qdictKeyOrder, toJsonFilename,
  toQemuJson, unflattenOptions,
} from '../../../src/options/json.js';
import type { FlatOptions } from '../../../src/options/types.js';

function messageOf(action: () => unknown): string {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(BlkioError);
    return (error as BlkioError).message;
  }
  throw new Error('expected an error');
}

describe('parseQemuJson', () => {
  it('parses values, including QEMU extensions', () => {
    expect(parseQemuJson('{"a": [1, -2.5, true, false, null], "b": {"c": "d"}}'))
      .toEqual({ a: [1, -2.5, true, false, null], b: { c: 'd' } });
    expect(parseQemuJson("{'driver':'null-co','x':'it\\'s \"q\"'}")).toEqual({ driver: 'null-co', x: 'it\'s "q"' });
    expect(parseQemuJson(' \t\r\n1 ')).toBe(1);
    expect(Object.is(parseQemuJson('-0'), 0)).toBe(true);
    expect(parseQemuJson('1e3')).toBe(1000);
    expect(parseQemuJson('"\\u00e9\\ud83d\\ude00\\/\\b\\f\\n\\r\\t\\u0000"')).toBe('é😀/\b\f\n\r\t\0');
    expect(parseQemuJson('{"__proto__": 1}')).toEqual(JSON.parse('{"__proto__": 1}'));
  });

  it.each([
    // all confirmed with `qemu-io --object '<json>'` of QEMU 7.2
    ['', 'Expecting a JSON value'],
    ['   ', 'Expecting a JSON value'], // (via json: filenames; --object reads this as keyval)
    ['{"a":1}x', 'Expecting at most one JSON value'],
    ['{"a":1} 2', 'Expecting at most one JSON value'],
    ['{"a":1}}', 'Expecting at most one JSON value'],
    ['{"a":1}\f', 'Expecting at most one JSON value'],
    ['{"driver":', 'JSON parse error, premature EOI'],
    ['{', 'JSON parse error, premature EOI'],
    ['{"a":[}', 'JSON parse error, expecting value'],
    ['{"qom-type":}', 'JSON parse error, expecting value'],
    ['{"a":1,}', 'JSON parse error, expecting value'],
    ['{"a":[1,]}', 'JSON parse error, expecting value'],
    ['}', 'JSON parse error, expecting value'], // (via json: filenames)
    ['{"a" "b":1}', 'JSON parse error, missing : in object pair'],
    ['{"a" 1}', 'JSON parse error, missing : in object pair'],
    ['{"a":1 "b":2}', 'JSON parse error, expected separator in dict'],
    ['{"a":[1 2]}', 'JSON parse error, expected separator in list'],
    ['{1:2}', 'JSON parse error, key is not a string in object'],
    ['{[1]:2}', 'JSON parse error, key is not a string in object'],
    ['{"a":1,"a":2}', 'JSON parse error, duplicate key'],
    ['{"a":tru}', "JSON parse error, invalid keyword 'tru'"],
    ['{"a":nulls}', "JSON parse error, invalid keyword 'nulls'"],
    ['{"a":True}', "JSON parse error, stray 'T'"],
    ['{"a":01}', "JSON parse error, stray '01'"],
    ['{"a":1.}', "JSON parse error, stray '1.}'"],
    ['{"a":-}', "JSON parse error, stray '-}'"],
    ['{"a":1e+}', "JSON parse error, stray '1e+}'"],
    ['{"a":.5}', "JSON parse error, stray '.'"],
    ['{"a":+1}', "JSON parse error, stray '+'"],
    ['{"a":%d}', "JSON parse error, stray '%'"],
    ['{a:1}', "JSON parse error, invalid keyword 'a'"],
    ['{"a":"b', "JSON parse error, stray '\"b'"],
    ['{"a":"x\u0001"}', "JSON parse error, stray '\"x\u0001'"],
    ['{1:2, x}', 'JSON parse error, key is not a string in object'], // x lexes as a keyword
    ['{"a":"\\x"}', 'JSON parse error, invalid escape sequence in string'],
    ['{"a":"\\u12"}', 'JSON parse error, \\u12" is not a valid Unicode character'],
    ['{"a":"\\u12g4"}', 'JSON parse error, \\u12g4 is not a valid Unicode character'],
    ['{"a":"\\ud800"}', 'JSON parse error, \\ud800 is not a valid Unicode character'],
    ['{"a":"\\ud800\\u0041"}', 'JSON parse error, \\ud800 is not a valid Unicode character'],
    ['{"a":"\\udfff"}', 'JSON parse error, \\udfff is not a valid Unicode character'],
    ['{"a":"\\ufffe"}', 'JSON parse error, \\ufffe is not a valid Unicode character'],
    ['{"a":"\\ud83f\\udfff"}', 'JSON parse error, \\ud83f\\udfff is not a valid Unicode character'],
    ['{"a":"\ufdd0"}', 'JSON parse error, invalid UTF-8 sequence in string'],
    [`{"a":${'['.repeat(1024)}${']'.repeat(1024)}}`, 'JSON nesting depth limit exceeded'],
  ])('%j -> %j', (text, message) => {
    expect(messageOf(() => parseQemuJson(text))).toBe(message);
  });

  it('allows nesting up to 1024 levels', () => {
    expect(() => parseQemuJson(`{"a":${'['.repeat(1023)}${']'.repeat(1023)}}`)).not.toThrow();
  });
});

describe('json: filenames', () => {
  it('recognises the prefix', () => {
    expect(isJsonFilename('json:{}')).toBe(true);
    expect(isJsonFilename('JSON:{}')).toBe(false);
    expect(isJsonFilename('/tmp/json:x')).toBe(false);
  });

  it('flattens the object', () => {
    expect(parseJsonFilename('json:{"driver":"qcow2","file":{"driver":"file","filename":"a.qcow2"}}'))
      .toEqual({ driver: 'qcow2', 'file.driver': 'file', 'file.filename': 'a.qcow2' });
    expect(parseJsonFilename('json:{"driver":"null-co","size":null,"read-zeroes":true}'))
      .toEqual({ driver: 'null-co', size: null, 'read-zeroes': true });
  });

  it.each([
    ['json:{"driver":', 'Could not parse the JSON options: JSON parse error, premature EOI'],
    ['json:', 'Could not parse the JSON options: Expecting a JSON value'],
    ['json:{"a":1}x', 'Could not parse the JSON options: Expecting at most one JSON value'],
    ['json:{"driver":"raw","driver":"qcow2"}', 'Could not parse the JSON options: JSON parse error, duplicate key'],
    ['json:[1]', 'Invalid JSON object given'],
    ['json:1', 'Invalid JSON object given'],
  ])('%j fails with %j', (filename, message) => {
    expect(messageOf(() => parseJsonFilename(filename))).toBe(message);
  });
});

describe('flattenTree', () => {
  it('spells nested objects and arrays as dotted keys', () => {
    expect(flattenTree({
      driver: 'quorum',
      children: [{ driver: 'file', filename: 'a' }, { driver: 'raw', file: { filename: 'b' } }],
      'vote-threshold': 1,
    })).toEqual({
      driver: 'quorum',
      'children.0.driver': 'file', 'children.0.filename': 'a',
      'children.1.driver': 'raw', 'children.1.file.filename': 'b',
      'vote-threshold': 1,
    });
    expect(flattenTree({ a: { b: 'c' } }, 'file')).toEqual({ 'file.a.b': 'c' });
  });

  it('lets a nested member override the same dotted key at the top level, like QEMU', () => {
    expect(flattenTree({ 'file.size': '2k', file: { driver: 'null-co', size: '1k' } }))
      .toEqual({ 'file.size': '1k', 'file.driver': 'null-co' });
    expect(flattenTree({ file: { driver: 'null-co', size: '1k' }, 'file.size': '2k' }))
      .toEqual({ 'file.driver': 'null-co', 'file.size': '1k' });
  });

  it('keeps empty objects and arrays as values, at any depth', () => {
    expect(flattenTree({ driver: 'raw', file: {}, x: [] })).toEqual({ driver: 'raw', file: {}, x: [] });
    expect(flattenTree({ file: { cache: {}, driver: 'file' }, children: [[], {}] }))
      .toEqual({ 'file.cache': {}, 'file.driver': 'file', 'children.0': [], 'children.1': {} });
  });
});

describe('unflattenOptions', () => {
  it('rebuilds objects and arrays', () => {
    expect(unflattenOptions({
      driver: 'quorum', 'children.1.driver': 'raw', 'children.0.driver': 'file', 'children.0.filename': 'a',
      'vote-threshold': 1,
    })).toEqual({
      driver: 'quorum', children: [{ driver: 'file', filename: 'a' }, { driver: 'raw' }], 'vote-threshold': 1,
    });
  });

  it('reads .. as an escaped dot', () => {
    expect(unflattenOptions({ 'a..b.c': 1, 'x...y': 2 })).toEqual({ 'a.b': { c: 1 }, 'x.': { y: 2 } });
  });

  it("keeps the caller's key order", () => {
    expect(Object.keys(unflattenOptions({ driver: 'null-co', size: 1, 'read-zeroes': true, 'x.b': 1, 'x.a': 2 })))
      .toEqual(['driver', 'size', 'read-zeroes', 'x']);
    expect(Object.keys(unflattenOptions({ 'x.b': 1, 'x.a': 2 }).x as object)).toEqual(['b', 'a']);
  });

  it('keeps the top level an object', () => {
    expect(unflattenOptions({ 0: 'a', 1: 'b' })).toEqual({ 0: 'a', 1: 'b' });
  });

  it('is the inverse of flattenTree', () => {
    const tree = { driver: 'raw', file: { driver: 'blkdebug', 'inject-error': [{ event: 'read_aio', errno: 5 }] } };
    expect(unflattenOptions(flattenTree(tree))).toEqual(tree);
  });

  it.each<[FlatOptions, string]>([
    [{ a: 1, 'a.b': 2 }, 'Cannot mix scalar and non-scalar keys'],
    [{ 'a.b': 2, a: 1 }, 'Cannot mix scalar and non-scalar keys'],
    [{ 'a.0': 1, 'a.b': 2 }, 'Cannot mix list and non-list keys'],
    [{ 'a.0': 1, 'a.2': 2 }, 'List indices are not contiguous, saw 2 elements but 2 largest index'],
    [{ 'a.0': 1, 'a.01': 2 }, 'Missing list index 1'],
    [{ 'a.-1': 1 }, 'List indices are not contiguous, saw 1 elements but -1 largest index'],
  ])('%j fails with %j', (flat, message) => {
    expect(messageOf(() => unflattenOptions(flat))).toBe(message);
  });
});

describe('extractPrefix', () => {
  it('moves the child options out of the dictionary', () => {
    const flat: FlatOptions = { driver: 'qcow2', 'file.driver': 'file', 'file.filename': 'a', 'file2.x': 1, file: 'n' };
    expect(extractPrefix(flat, 'file')).toEqual({ driver: 'file', filename: 'a' });
    expect(flat).toEqual({ driver: 'qcow2', 'file2.x': 1, file: 'n' });
    expect(extractPrefix(flat, 'backing')).toEqual({});
  });
});

describe('QDict order', () => {
  it('matches the order QEMU iterates (and reports) dictionary keys', () => {
    // `Block format 'raw' does not support the option 'bbb'` for both insertion orders
    expect(qdictKeyOrder(['driver', 'file.filename', 'aaa', 'bbb'])).toEqual(['bbb', 'aaa', 'file.filename', 'driver']);
    expect(qdictKeyOrder(['driver', 'file.filename', 'bbb', 'aaa'])).toEqual(['bbb', 'aaa', 'file.filename', 'driver']);
    expect(qdictKeyOrder(['driver', 'size', 'read-zeroes'])).toEqual(['read-zeroes', 'driver', 'size']);
  });

  it('puts later insertions first within a bucket', () => {
    // these two keys share a bucket
    expect(qdictKeyOrder(['inject-error.0.event', 'inject-error.0.errno'])).toEqual(['inject-error.0.errno', 'inject-error.0.event']);
    expect(qdictKeyOrder(['inject-error.0.errno', 'inject-error.0.event'])).toEqual(['inject-error.0.event', 'inject-error.0.errno']);
  });
});

describe('toQemuJson / toJsonFilename', () => {
  it('writes what qemu-img info shows for generated filenames', () => {
    expect(toJsonFilename({ driver: 'null-co', size: 1024, 'read-zeroes': true }))
      .toBe('json:{"read-zeroes": true, "driver": "null-co", "size": 1024}');
    expect(toJsonFilename({
      driver: 'raw',
      file: { driver: 'blkdebug', image: { driver: 'file', filename: '/tmp/opt/x.raw' }, align: 4096 },
    })).toBe('json:{"driver": "raw", "file": {"image": {"driver": "file", "filename": "/tmp/opt/x.raw"}, "driver": "blkdebug", "align": 4096}}');
    expect(toJsonFilename({
      driver: 'quorum',
      'vote-threshold': 1,
      children: [{ driver: 'file', filename: '/tmp/opt/x.raw' }, { driver: 'raw', file: { driver: 'file', filename: '/tmp/opt/x.raw' } }],
    })).toBe('json:{"children": [{"driver": "file", "filename": "/tmp/opt/x.raw"}, {"driver": "raw", "file": {"driver": "file", "filename": "/tmp/opt/x.raw"}}], "driver": "quorum", "vote-threshold": 1}');
  });

  it('escapes strings like QEMU (uppercase \\u for control and non-ASCII characters)', () => {
    expect(toQemuJson('a"b\\c\b\f\n\r\t\u0001\u007fé😀/')).toBe('"a\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\\u007F\\u00E9\\uD83D\\uDE00/"');
  });

  it('writes numbers, empty containers and null', () => {
    expect(toQemuJson([1.5, 0.1, -3, null, false, {}, []])).toBe('[1.5, 0.10000000000000001, -3, null, false, {}, []]');
  });

  it('round-trips through parseQemuJson', () => {
    const value = { a: ['x', { b: 'y\n' }], c: 2.5 };
    expect(parseQemuJson(toQemuJson(value))).toEqual(value);
  });
});
