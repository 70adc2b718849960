import { describe, expect, it } from 'vitest';
import { formatReport, hexdump, timestr } from '../../../../src/commands/io/format.js';

describe('timestr', () => {
  it('prints sub-second times as SS.ss sec', () => {
    expect(timestr(0n, false)).toBe('00.00 sec');
    expect(timestr(123_456_789n, false)).toBe('00.12 sec');
    expect(timestr(999_999_999n, false)).toBe('01.00 sec');
  });

  it('prints longer times (and always in CSV) as H:MM:SS.ss', () => {
    expect(timestr(1_500_000_000n, false)).toBe('0:00:01.50');
    expect(timestr(6135_990_000_000n, false)).toBe('1:42:15.99');
    expect(timestr(10_000_000n, true)).toBe('0:00:00.01');
  });
});

describe('formatReport', () => {
  it('prints the two human lines', () => {
    expect(formatReport({ op: 'read', offset: 512, count: 1536, total: 1536, elapsed: 500_000_000n, csv: false })).toBe(
      'read 1536/1536 bytes at offset 512\n1.500 KiB, 1 ops; 00.50 sec (3 KiB/sec and 2.0000 ops/sec)\n',
    );
  });

  it('prints the CSV line with -C', () => {
    expect(formatReport({ op: 'wrote', offset: 0, count: 512, total: 512, elapsed: 250_000_000n, csv: true })).toBe(
      '512,1,0:00:00.25,2048.000,4.000\n',
    );
  });

  it('prints a zero time as C does (infinite rates)', () => {
    expect(formatReport({ op: 'discard', offset: 0, count: 0, total: 0, elapsed: 0n, csv: false })).toBe(
      'discard 0/0 bytes at offset 0\n0 bytes, 1 ops; 00.00 sec (nan bytes/sec and inf ops/sec)\n',
    );
  });
});

describe('hexdump', () => {
  it('prints 16 bytes a line, the offset column and alphanumerics only', () => {
    const buf = new Uint8Array([0x41, 0x30, 0x7a, 0x20, 0x2e, 0xff, 0, 0x7e, 0x5a, 0x39, 1, 2, 3, 4, 5, 6, 0x61, 0x62]);
    expect(hexdump(buf, 0xffa)).toBe(
      '00000ffa:  41 30 7a 20 2e ff 00 7e 5a 39 01 02 03 04 05 06  A0z.....Z9......\n' +
        '0000100a:  61 62  ab\n',
    );
  });

  it('widens the offset beyond 32 bits and prints nothing for no data', () => {
    expect(hexdump(new Uint8Array([0x51]), 2 ** 40)).toBe('10000000000:  51  Q\n');
    expect(hexdump(new Uint8Array(0), 0)).toBe('');
  });
});
