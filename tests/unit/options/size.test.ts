import { describe, expect, it } from 'vitest';
import { BlkioError } from '../../../src/errors.js';
import {
  cvtnum, cvtnumErrorText, cvtstr, formatFixed, formatGeneral, parseSize, parseSizeBigInt, scanUnsigned,
  SizeError, sizeToStr,
} from '../../../src/options/size.js';

function sizeErrorCode(text: string, parse: (t: string) => unknown = parseSize): string {
  try {
    parse(text);
  } catch (error) {
    expect(error).toBeInstanceOf(SizeError);
    expect(error).toBeInstanceOf(BlkioError);
    return (error as SizeError).code;
  }
  return 'OK';
}

describe('parseSize (qemu_strtosz)', () => {
  it.each([
    ['0', 0], ['512', 512], ['1b', 1], ['1B', 1], ['1k', 1024], ['1K', 1024], ['64k', 65536],
    ['1M', 1048576], ['1m', 1048576], ['2G', 2 ** 31], ['1T', 2 ** 40], ['1P', 2 ** 50], ['1E', 2 ** 60],
    ['1.5k', 1536], ['1.5K', 1536], ['1.k', 1024], ['1.', 1], ['1.0', 1], ['1.0k', 1024],
    ['+1', 1], [' 1', 1], ['\t 7', 7],
    ['0x10', 16], ['0X10', 16], ['+0x10', 16], ['0x1b', 27], ['0x1B', 27],
    ['1.0005k', 1025], ['1.00048828125k', 1025], ['1.000488281249k', 1024], ['0.0001k', 0],
    ['1.5e', 1.5 * 2 ** 60], ['1.e', 2 ** 60], ['8E', 2 ** 63],
  ])('%j -> %d', (text, expected) => {
    expect(parseSize(text)).toBe(expected);
  });

  it('reads the fraction as a C double, then truncates it to 64 bits like QEMU', () => {
    expect(parseSize('1.0000000000000001k')).toBe(1024);
    expect(parseSize('1.999999999999999999k')).toBe(1024); // .999999999999999999 == 1.0 as double
    expect(parseSize('0.9999999999999999999k')).toBe(0);
    expect(parseSize('1.99999999999999999999b')).toBe(1);
    expect(parseSize('0.00000000000000000000000001E')).toBe(0);
  });

  it('drops a fraction strtod cannot represent together with the next character (QEMU quirk)', () => {
    expect(parseSize('1.5e999k')).toBe(1);
    expect(parseSize('1.5e-999k')).toBe(1);
    expect(parseSize('1.5e-320k')).toBe(1);
    expect(sizeErrorCode('1.5e999')).toBe('EINVAL');
  });

  it.each([
    '', 'abc', ' abc', '1x', '1kb', '1e3', '1.5e3k', '1.5e-300k', '1.5ek', '1.5e+', '.5k', '1.5', '0.5', '1.5b',
    '0x', '0x1.5', '00x10', '-1', '-0', '-', '1.5k ', '99999999999999999999x', '16Ex', '0x1kz',
  ])('%j is invalid (EINVAL)', (text) => {
    expect(sizeErrorCode(text)).toBe('EINVAL');
  });

  it.each(['99999999999999999999', '-99999999999999999999', '18446744073709551616', '16E',
    '0x10000000000000000', '0xffffffffffffffffk'])('%j is out of range (ERANGE)', (text) => {
    expect(sizeErrorCode(text, (t) => parseSizeBigInt(t))).toBe('ERANGE');
  });

  it('gives exact 64-bit results as BigInt', () => {
    expect(parseSizeBigInt('18446744073709551615')).toBe(2n ** 64n - 1n);
    expect(parseSizeBigInt('0xffffffffffffffff')).toBe(2n ** 64n - 1n);
    // .9999999999999999 is 1 - 2^-53 as a double
    expect(parseSizeBigInt('15.9999999999999999E')).toBe(2n ** 64n - 128n);
  });

  it('returns numbers beyond 2^53 only when exact', () => {
    expect(parseSize('8E')).toBe(2 ** 63);
    expect(parseSize('0x8000000000000000')).toBe(2 ** 63);
    expect(sizeErrorCode('9223372036854775807')).toBe('ERANGE');
  });

  it('uses the default suffix when none is given', () => {
    expect(parseSize('2', 'M')).toBe(2 * 2 ** 20);
    expect(parseSize('1.5', 'K')).toBe(1536);
    expect(parseSize('2b', 'M')).toBe(2);
  });

  it('warns about suffixes on hex numbers, even when the parse then fails', () => {
    const warnings: string[] = [];
    expect(parseSize('0x10k', 'B', (w) => warnings.push(w))).toBe(16384);
    expect(sizeErrorCode('0x1kz', (t) => parseSize(t, 'B', (w) => warnings.push(w)))).toBe('EINVAL');
    expect(parseSize('0x10', 'B', (w) => warnings.push(w))).toBe(16);
    expect(warnings).toEqual([
      'warning: Using a multiplier suffix on hex numbers is deprecated: 0x10k',
      'warning: Using a multiplier suffix on hex numbers is deprecated: 0x1kz',
    ]);
  });
});

describe('scanUnsigned (strtoull)', () => {
  it('handles bases, signs and prefixes', () => {
    expect(scanUnsigned('  -12x', 10)).toEqual({ value: 12n, negative: true, overflow: false, end: 5 });
    expect(scanUnsigned('0x1f', 0)?.value).toBe(31n);
    expect(scanUnsigned('017', 0)?.value).toBe(15n);
    expect(scanUnsigned('08', 0)).toMatchObject({ value: 0n, end: 1 });
    expect(scanUnsigned('0xg', 16)).toMatchObject({ value: 0n, end: 1 });
    expect(scanUnsigned('x', 10)).toBeUndefined();
    expect(scanUnsigned('18446744073709551616', 10)?.overflow).toBe(true);
  });
});

describe('cvtnum (qemu-io numbers)', () => {
  it('accepts what qemu_strtosz accepts up to INT64_MAX', () => {
    expect(cvtnum('1.5k')).toBe(1536);
    expect(cvtnum('7.99999999999E')).toBe(parseSize('7.99999999999E'));
    expect(sizeErrorCode('8E', cvtnum)).toBe('ERANGE');
    expect(sizeErrorCode('15.9999E', cvtnum)).toBe('ERANGE');
    expect(sizeErrorCode('9223372036854775808', cvtnum)).toBe('ERANGE');
    expect(sizeErrorCode('0x8000000000000000', cvtnum)).toBe('ERANGE');
    expect(sizeErrorCode('1x', cvtnum)).toBe('EINVAL');
  });

  it.each([
    ['1x', 'Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- 1x'],
    ['1.5', 'Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- 1.5'],
    ['-1', 'Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- -1'],
    ['99999999999999999999', 'Parsing error: argument too large -- 99999999999999999999'],
    ['8E', 'Parsing error: argument too large -- 8E'],
  ])('reports %j as qemu-io does', (text, message) => {
    let caught: unknown;
    try {
      cvtnum(text);
    } catch (error) {
      caught = error;
    }
    expect(cvtnumErrorText(text, caught)).toBe(message);
  });

  it('falls back to the bare message for other errors', () => {
    expect(cvtnumErrorText('x', new BlkioError('EIO'))).toBe('Parsing error: x');
  });
});

describe('formatFixed / formatGeneral (C printf)', () => {
  it('rounds exact binary ties to even and everything else to nearest', () => {
    expect(formatFixed(1.0625, 3)).toBe('1.062');
    expect(formatFixed(1.1875, 3)).toBe('1.188');
    expect(formatFixed(0.125, 2)).toBe('0.12');
    expect(formatFixed(2.5, 0)).toBe('2');
    expect(formatFixed(3.5, 0)).toBe('4');
    expect(formatFixed(1.005, 2)).toBe('1.00'); // 1.005 is slightly below in binary
    expect(formatFixed(0.0001, 3)).toBe('0.000');
    expect(formatFixed(-1.5, 1)).toBe('-1.5');
    expect(formatFixed(-0.0001, 3)).toBe('-0.000');
    expect(formatFixed(2 ** 70, 1)).toBe('1180591620717411303424.0');
    expect(formatFixed(Infinity, 3)).toBe('inf');
    expect(formatFixed(NaN, 3)).toBe('nan');
    expect(formatFixed(20167.796, 4)).toBe('20167.7960');
  });

  it('formats %g with significant digits, exponent form and zero stripping', () => {
    expect(formatGeneral(1.25, 3)).toBe('1.25');
    expect(formatGeneral(64, 3)).toBe('64');
    expect(formatGeneral(0.9765625, 3)).toBe('0.977');
    expect(formatGeneral(999.5, 3)).toBe('1e+03');
    expect(formatGeneral(999.4, 3)).toBe('999');
    expect(formatGeneral(0.0001234, 3)).toBe('0.000123');
    expect(formatGeneral(0.00001234, 3)).toBe('1.23e-05');
    expect(formatGeneral(0, 3)).toBe('0');
    expect(formatGeneral(1.5, 17)).toBe('1.5');
    expect(formatGeneral(0.1, 17)).toBe('0.10000000000000001');
    expect(formatGeneral(1.8446744073709552e19, 17)).toBe('1.8446744073709552e+19');
    expect(formatGeneral(1e100, 3)).toBe('1e+100');
    expect(formatGeneral(123456, 0)).toBe('1e+05');
  });
});

describe('cvtstr (qemu-io sizes)', () => {
  it.each([
    // confirmed against `qemu-io -c 'read 0 N'` / `alloc N` / `length` of QEMU 7.2
    [0, '0 bytes'], [1, '1 bytes'], [511, '511 bytes'], [512, '512 bytes'], [1023, '1023 bytes'],
    [1025, '1.001 KiB'], [1087, '1.062 KiB'], [1088, '1.062 KiB'], [1089, '1.063 KiB'], [1151, '1.124 KiB'],
    [1152, '1.125 KiB'], [1536, '1.500 KiB'], [65536, '64 KiB'], [1049088, '1 MiB'],
    [0x3fff0000, '1023.938 MiB'], [2147483136, '2 GiB'], [0x80010000, '2 GiB'], [3221226496, '3 GiB'],
    [2 ** 50, '1 PiB'], [2 ** 60, '1 EiB'], [4 * 2 ** 60, '4 EiB'],
  ])('%d -> %j', (value, expected) => {
    expect(cvtstr(value)).toBe(expected);
  });

  it('prints sizes as the exact %.3f of their unit would, fast path or not', () => {
    const units: Array<[number, string]> = [[2 ** 50, ' PiB'], [2 ** 40, ' TiB'], [2 ** 30, ' GiB'], [2 ** 20, ' MiB'], [2 ** 10, ' KiB']];
    for (let i = 0; i < 2000; i++) {
      // Cluster and sector multiples (with exact thousandths of a unit or not) and odd byte counts.
      const value = Math.floor(Math.random() * 2 ** (11 + (i % 36))) * [65536, 512, 1][i % 3];
      if (value < 1024) continue;
      const [size, suffix] = units.find(([s]) => value >= s)!;
      const text = formatFixed(value / size, 3);
      const trim = text.indexOf('.000');
      expect(cvtstr(value), String(value)).toBe((trim >= 0 ? text.slice(0, trim) : text) + suffix);
    }
    expect(cvtstr(0x1f3e40000)).toBe('7.811 GiB');
    expect(cvtstr(1088 * 1024)).toBe('1.062 MiB');
    expect(cvtstr(1536 * 1024)).toBe('1.500 MiB');
  });

  it('handles fractional rates like the report line', () => {
    expect(cvtstr(20.5)).toBe('20.500000 bytes');
    expect(cvtstr(1.0005)).toBe('1 bytes'); // "1.000500": the first ".000" swallows the rest
    expect(cvtstr(10325911.584)).toBe('9.848 MiB');
    expect(cvtstr(4964.7749)).toBe('4.848 KiB');
  });
});

describe('sizeToStr (qemu-img sizes)', () => {
  it.each([
    // confirmed against `qemu-img info` of QEMU 7.2 (virtual size)
    [0, '0 B'], [512, '512 B'], [1024, '1 KiB'], [1536, '1.5 KiB'], [266240, '260 KiB'],
    [1022464, '998 KiB'], [1022976, '999 KiB'], [1023488, '1e+03 KiB'], [1024000, '0.977 MiB'],
    [1047552, '0.999 MiB'], [1048064, '1 MiB'], [1310720, '1.25 MiB'], [10240000, '9.77 MiB'],
    [67108864, '64 MiB'], [1073741824, '1 GiB'], [2147483136, '2 GiB'], [107374182400, '100 GiB'],
    [2 ** 50, '1 PiB'], [2 ** 60, '1 EiB'],
    // not a sector multiple, so derived from size_to_str's formula
    [1000, '0.977 KiB'], [999, '999 B'],
  ])('%d -> %j', (value, expected) => {
    expect(sizeToStr(value)).toBe(expected);
  });
});
