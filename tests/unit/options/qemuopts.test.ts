import { describe, expect, it } from 'vitest';
import { BlkioError } from '../../../src/errors.js';
import {
  hasHelpOption, isValidOptionList, parseBool, parseInteger, parseNumber, parseNumberExact, parseQemuOpts, parseQemuOptsDict,
  parseSizeOption, parseSizeOptionExact, parseString, qemuOptsToDict, qemuOptsValue,
} from '../../../src/options/qemuopts.js';

function errorOf(action: () => unknown): BlkioError {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(BlkioError);
    return error as BlkioError;
  }
  throw new Error('expected an error');
}

function parseWithWarnings(text: string, options: Parameters<typeof parseQemuOpts>[1] = {}) {
  const warnings: string[] = [];
  const pairs = parseQemuOpts(text, { ...options, warn: (w) => warnings.push(w) });
  return { pairs, warnings };
}

describe('parseQemuOpts', () => {
  it('splits key=value items, keeping repeats in order', () => {
    expect(parseQemuOpts('driver=raw,file.filename=/tmp/x,a=1,a=2')).toEqual([
      ['driver', 'raw'], ['file.filename', '/tmp/x'], ['a', '1'], ['a', '2'],
    ]);
  });

  it('treats ,, as a literal comma in values', () => {
    expect(parseQemuOpts('file.filename=/tmp/x,,y,driver=raw')).toEqual([['file.filename', '/tmp/x,y'], ['driver', 'raw']]);
    expect(parseQemuOpts('a=x,,')).toEqual([['a', 'x,']]);
    expect(parseQemuOpts('a=x,,,b=1')).toEqual([['a', 'x,'], ['b', '1']]);
    // outside a value `,,` is not an escape: the option value ends at the first single comma
    expect(parseQemuOpts('driver=raw,,file.filename=/x')).toEqual([['driver', 'raw,file.filename=/x']]);
  });

  it('ignores a trailing comma and accepts empty keys and values', () => {
    expect(parseQemuOpts('driver=raw,')).toEqual([['driver', 'raw']]);
    expect(parseQemuOpts('=x')).toEqual([['', 'x']]);
    expect(parseQemuOpts('driver=')).toEqual([['driver', '']]);
    expect(parseQemuOpts('')).toEqual([]);
  });

  it('applies an implied first key (qemu-img --image-opts), with the ,, escape', () => {
    expect(parseQemuOpts('x.raw,,y,driver=raw', { impliedKey: 'file' })).toEqual([['file', 'x.raw,y'], ['driver', 'raw']]);
    expect(parseQemuOpts('driver=raw,foo', { impliedKey: 'file' })).toEqual([['driver', 'raw'], ['foo', 'on']]);
  });

  it('turns bare words into deprecated boolean flags', () => {
    expect(parseWithWarnings('driver=raw,foo,nofoo')).toEqual({
      pairs: [['driver', 'raw'], ['foo', 'on'], ['foo', 'off']],
      warnings: [
        "warning: short-form boolean option 'foo' deprecated\nPlease use foo=on instead",
        "warning: short-form boolean option 'nofoo' deprecated\nPlease use foo=off instead",
      ],
    });
  });

  it('words the flag warnings as QEMU 7.2 does for odd names', () => {
    const texts = ['read-only', 'noread-only', ',driver=raw', 'no', 'nohelp', 'delay', 'nodelay', 'driver']
      .map((text) => parseWithWarnings(text).warnings[0]);
    expect(texts).toEqual([
      "warning: short-form boolean option 'read-only' deprecated\nPlease use read-only=on instead",
      "warning: short-form boolean option 'noread-only' deprecated\nPlease use read-only=off instead",
      "warning: short-form boolean option '' deprecated\nPlease use =on instead",
      "warning: short-form boolean option 'no' deprecated\nPlease use =off instead",
      "warning: short-form boolean option 'nohelp' deprecated\nPlease use help=off instead",
      "warning: short-form boolean option 'delay' deprecated\nPlease use nodelay=off instead",
      "warning: short-form boolean option 'nodelay' deprecated\nPlease use nodelay=on instead",
      "warning: short-form boolean option 'driver' deprecated\nPlease use driver=on instead",
    ]);
  });

  it('does not warn about help flags, and stays quiet without a sink', () => {
    expect(parseWithWarnings('driver=raw,help,?')).toEqual({
      pairs: [['driver', 'raw'], ['help', 'on'], ['?', 'on']], warnings: [],
    });
    expect(parseQemuOpts('lazy_refcounts')).toEqual([['lazy_refcounts', 'on']]);
  });

  describe('id items', () => {
    it('drops them by default (qemu-img -o)', () => {
      expect(parseQemuOpts('id=x,a=1')).toEqual([['a', '1']]);
    });

    it("keeps the first, validated, in 'keep' mode (qemu-io --image-opts)", () => {
      expect(parseQemuOpts('driver=raw,id=a,id=b', { id: 'keep' })).toEqual([['id', 'a'], ['driver', 'raw']]);
      const error = errorOf(() => parseQemuOpts('id=1bad,driver=raw,foo', { id: 'keep', warn: () => { throw new Error('no warning first'); } }));
      expect(error.message).toBe("Parameter 'id' expects an identifier");
      expect(error.hints).toEqual(["Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."]);
    });

    it("refuses them in 'reject' mode (qemu-io open -o)", () => {
      expect(errorOf(() => parseQemuOpts('id=x', { id: 'reject' })).message).toBe("Invalid parameter 'id'");
      expect(parseQemuOpts('driver=raw', { id: 'reject' })).toEqual([['driver', 'raw']]);
    });
  });

  it('converts to a dictionary where the last repeat wins', () => {
    expect(qemuOptsToDict([['a', '1'], ['b', '2'], ['a', '3']])).toEqual({ a: '3', b: '2' });
    expect(parseQemuOptsDict('x.raw,driver=raw,driver=qcow2', { impliedKey: 'file' })).toEqual({ file: 'x.raw', driver: 'qcow2' });
  });
});

describe('qemu-img helpers', () => {
  it('detects help requests only as bare items', () => {
    expect(hasHelpOption('help')).toBe(true);
    expect(hasHelpOption('?')).toBe(true);
    expect(hasHelpOption('cluster_size=64k,help')).toBe(true);
    expect(hasHelpOption('help=1')).toBe(false);
    expect(hasHelpOption('nohelp')).toBe(false);
    expect(hasHelpOption('a=help')).toBe(false);
  });

  it('validates -o lists like qemu-img', () => {
    expect(isValidOptionList('cluster_size=64k')).toBe(true);
    expect(isValidOptionList('cluster_size=64k,,')).toBe(true);
    expect(isValidOptionList('')).toBe(false);
    expect(isValidOptionList(',cluster_size=64k')).toBe(false);
    expect(isValidOptionList('cluster_size=64k,')).toBe(false);
    expect(isValidOptionList('cluster_size=64k,,,')).toBe(false);
  });
});

describe('typed option values', () => {
  it('converts JSON scalars the way QemuOpts absorbs them', () => {
    expect(qemuOptsValue('x')).toBe('x');
    expect(qemuOptsValue(true)).toBe('on');
    expect(qemuOptsValue(false)).toBe('off');
    expect(qemuOptsValue(1000)).toBe('1000');
    expect(qemuOptsValue(-0)).toBe('0');
    expect(qemuOptsValue(1.5)).toBe('1.5');
    expect(qemuOptsValue(0.1)).toBe('0.10000000000000001');
    expect(qemuOptsValue(18446744073709551616)).toBe('1.8446744073709552e+19');
    expect(qemuOptsValue(null)).toBeUndefined();
  });

  describe('parseBool', () => {
    it.each(['on', 'yes', 'true', 'y'])('%s is true', (word) => expect(parseBool('x', word)).toBe(true));
    it.each(['off', 'no', 'false', 'n'])('%s is false', (word) => expect(parseBool('x', word)).toBe(false));

    it('accepts JSON booleans and refuses other words', () => {
      expect(parseBool('read-zeroes', true)).toBe(true);
      expect(errorOf(() => parseBool('read-only', 'maybe')).message).toBe("Parameter 'read-only' expects 'on' or 'off'");
      expect(errorOf(() => parseBool('read-zeroes', 1)).message).toBe("Parameter 'read-zeroes' expects 'on' or 'off'");
      expect(errorOf(() => parseBool('x', 'ON')).message).toBe("Parameter 'x' expects 'on' or 'off'");
      expect(errorOf(() => parseBool('share', 'maybe', 'keyval')).message).toBe("Parameter 'share' expects 'on' or 'off'");
    });

    it('wants a real boolean from typed JSON', () => {
      expect(parseBool('share', false, 'qapi')).toBe(false);
      expect(errorOf(() => parseBool('share', 'on', 'qapi')).message).toBe("Invalid parameter type for 'share', expected: boolean");
    });
  });

  describe('parseNumber', () => {
    it('reads C integers of any base', () => {
      expect(parseNumber('n', '16')).toBe(16);
      expect(parseNumber('n', '0x10')).toBe(16);
      expect(parseNumber('n', '010')).toBe(8);
      expect(parseNumber('n', ' 5')).toBe(5);
      expect(parseNumber('n', 42)).toBe(42);
      expect(parseNumber('n', '-1')).toBe(2 ** 64); // UINT64_MAX, rounded
    });

    it('gives the exact value on request', () => {
      expect(parseNumberExact('n', '-1')).toBe(2n ** 64n - 1n);
      expect(parseNumberExact('n', '9007199254740993')).toBe(9007199254740993n);
      expect(errorOf(() => parseNumberExact('n', '1k')).message).toBe("Parameter 'n' expects a number");
      expect(errorOf(() => parseNumberExact('n', '1k', 'keyval')).message).toBe("Parameter 'n' expects integer");
    });

    it('uses QemuOpts wording', () => {
      expect(errorOf(() => parseNumber('latency-ns', 'abc')).message).toBe("Parameter 'latency-ns' expects a number");
      expect(errorOf(() => parseNumber('n', '08')).message).toBe("Parameter 'n' expects a number");
      expect(errorOf(() => parseNumber('n', '1k')).message).toBe("Parameter 'n' expects a number");
      expect(errorOf(() => parseNumber('n', '')).message).toBe("Parameter 'n' expects a number");
      expect(errorOf(() => parseNumber('refcount_bits', '99999999999999999999')).message)
        .toBe("Value '99999999999999999999' is too large for parameter 'refcount_bits'");
      expect(errorOf(() => parseNumber('n', '99999999999999999999x')).message).toBe("Parameter 'n' expects a number");
    });

    it('uses keyval and QAPI wording', () => {
      expect(errorOf(() => parseNumber('poll-max-ns', 'abc', 'keyval')).message).toBe("Parameter 'poll-max-ns' expects integer");
      expect(errorOf(() => parseNumber('poll-max-ns', '99999999999999999999', 'keyval')).message)
        .toBe("Parameter 'poll-max-ns' expects integer");
      expect(parseNumber('n', 7, 'qapi')).toBe(7);
      expect(parseNumber('n', -1, 'qapi')).toBe(2 ** 64);
      expect(errorOf(() => parseNumber('size', '1M', 'qapi')).message).toBe("Parameter 'size' expects uint64");
      expect(errorOf(() => parseNumber('size', 1.5, 'qapi')).message).toBe("Parameter 'size' expects uint64");
    });
  });

  describe('parseInteger', () => {
    it('reads signed 64-bit values', () => {
      expect(parseInteger('i', '-5')).toBe(-5);
      expect(parseInteger('i', '0x10')).toBe(16);
      expect(parseInteger('i', -5, 'qapi')).toBe(-5);
    });

    it('uses keyval and QAPI wording', () => {
      expect(errorOf(() => parseInteger('x-iops-total', 'abc')).message).toBe("Parameter 'x-iops-total' expects integer");
      expect(errorOf(() => parseInteger('x-iops-total', '1.5')).message).toBe("Parameter 'x-iops-total' expects integer");
      expect(errorOf(() => parseInteger('i', '9223372036854775808')).message).toBe("Parameter 'i' expects integer");
      expect(errorOf(() => parseInteger('x-iops-total', 'abc', 'qapi')).message)
        .toBe("Invalid parameter type for 'x-iops-total', expected: integer");
      expect(errorOf(() => parseInteger('limits.iops-total', true, 'qapi')).message)
        .toBe("Invalid parameter type for 'limits.iops-total', expected: integer");
      expect(errorOf(() => parseInteger('i', 1.5, 'qapi')).message).toBe("Invalid parameter type for 'i', expected: integer");
    });
  });

  describe('parseSizeOption', () => {
    it('reads sizes with suffixes', () => {
      expect(parseSizeOption('cluster_size', '64k')).toBe(65536);
      expect(parseSizeOption('cluster_size', '0x10000')).toBe(65536);
      expect(parseSizeOption('cluster_size', '1.5k')).toBe(1536);
      expect(parseSizeOption('size', 1000)).toBe(1000);
      expect(parseSizeOption('size', '18446744073709551615')).toBe(2 ** 64);
    });

    it('gives the exact value on request, warning once about a hex suffix', () => {
      const warnings: string[] = [];
      expect(parseSizeOptionExact('size', '0x1k', 'qemuopts', (w) => warnings.push(w))).toBe(1024n);
      expect(warnings).toEqual(['warning: Using a multiplier suffix on hex numbers is deprecated: 0x1k']);
      expect(parseSizeOptionExact('size', '18446744073709551615')).toBe(2n ** 64n - 1n);
      expect(errorOf(() => parseSizeOptionExact('size', 'x', 'keyval')).message).toBe("Parameter 'size' expects size");
    });

    it('passes the hex suffix warning on', () => {
      const warnings: string[] = [];
      expect(parseSizeOption('cluster_size', '0x10k', 'qemuopts', (w) => warnings.push(w))).toBe(16384);
      expect(warnings).toEqual(['warning: Using a multiplier suffix on hex numbers is deprecated: 0x10k']);
    });

    it.each(['1x', 'abc', '-1', '1.5', '', 'on'])('rejects %j with the QemuOpts hint', (text) => {
      const error = errorOf(() => parseSizeOption('cluster_size', text));
      expect(error.message).toBe("Parameter 'cluster_size' expects a non-negative number below 2^64");
      expect(error.hints).toEqual([
        'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-',
        'and exabytes, respectively.',
      ]);
    });

    it('reports sizes of 2^64 and more as out of range', () => {
      expect(errorOf(() => parseSizeOption('cluster_size', '99999999999999999999')).message)
        .toBe("Value '99999999999999999999' is out of range for parameter 'cluster_size'");
      // a JSON number of 2^64 reaches QemuOpts as "%.17g" text, which is not a size
      expect(errorOf(() => parseSizeOption('size', 18446744073709551616)).message)
        .toBe("Parameter 'size' expects a non-negative number below 2^64");
    });

    it('uses keyval and QAPI wording', () => {
      for (const text of ['abc', '1x', '-1', '99999999999999999999']) {
        expect(errorOf(() => parseSizeOption('size', text, 'keyval')).message).toBe("Parameter 'size' expects size");
      }
      expect(parseSizeOption('size', '1M', 'keyval')).toBe(1048576);
      expect(parseSizeOption('size', 1048576, 'qapi')).toBe(1048576);
      expect(errorOf(() => parseSizeOption('size', '1M', 'qapi')).message).toBe("Parameter 'size' expects uint64");
    });
  });

  it('parseString wants a JSON string only from typed input', () => {
    expect(parseString('data', 'x')).toBe('x');
    expect(parseString('data', 1)).toBe('1');
    expect(errorOf(() => parseString('data', 1, 'qapi')).message).toBe("Invalid parameter type for 'data', expected: string");
  });
});
