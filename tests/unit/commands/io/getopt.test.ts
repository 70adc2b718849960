import { describe, expect, it } from 'vitest';
import { getopt, type LongOption } from '../../../../src/commands/io/getopt.js';

const LONG: LongOption[] = [
  { name: 'cmd', hasArg: true, key: 'c' },
  { name: 'copy-on-read', hasArg: false, key: 'C' },
  { name: 'cache', hasArg: true, key: 't' },
  { name: 'image-opts', hasArg: false, key: 'image-opts' },
  { name: 'drive', hasArg: true, key: 'drive' },
];

describe('getopt', () => {
  it('collects operands around options (glibc permutes)', () => {
    const r = getopt(['read', '0', '-v', '1', '-P', '0x55'], { short: 'bCl:pP:qs:v' });
    expect(r.operands).toEqual(['0', '1']);
    expect(r.items).toEqual([
      { kind: 'option', key: 'v', value: '' },
      { kind: 'option', key: 'P', value: '0x55' },
    ]);
  });

  it('clusters short options and attached arguments', () => {
    const r = getopt(['read', '-vqP0x11', '0', '1'], { short: 'P:qv' });
    expect(r.items.map((i) => (i.kind === 'option' ? `${i.key}=${i.value}` : i.message))).toEqual(['v=', 'q=', 'P=0x11']);
  });

  it('reports unknown options and missing arguments with glibc texts, in order', () => {
    const r = getopt(['read', '-X', '-1', '-P'], { short: 'P:' });
    expect(r.items).toEqual([
      { kind: 'error', message: "read: invalid option -- 'X'" },
      { kind: 'error', message: "read: invalid option -- '1'" },
      { kind: 'error', message: "read: option requires an argument -- 'P'" },
    ]);
  });

  it('treats -- as the end of options', () => {
    expect(getopt(['read', '--', '-1', '1'], { short: 'v' }).operands).toEqual(['-1', '1']);
  });

  it('reads --long as short options when there are no long options (plain getopt)', () => {
    expect(getopt(['open', '--image-opts'], { short: 'o:' }).items[0]).toEqual({ kind: 'error', message: "open: invalid option -- '-'" });
  });

  it('matches long options exactly, by unique prefix, and reports glibc errors', () => {
    const spec = { short: 'c:Ct:', long: LONG };
    expect(getopt(['p', '--cmd=help'], spec).items).toEqual([{ kind: 'option', key: 'c', value: 'help' }]);
    expect(getopt(['p', '--ca', 'none'], spec).items).toEqual([{ kind: 'option', key: 't', value: 'none' }]);
    expect(getopt(['p', '--c', 'x'], spec).items[0]).toEqual({
      kind: 'error', message: "p: option '--c' is ambiguous; possibilities: '--cmd' '--copy-on-read' '--cache'",
    });
    expect(getopt(['p', '--bogus=1'], spec).items[0]).toEqual({ kind: 'error', message: "p: unrecognized option '--bogus=1'" });
    expect(getopt(['p', '--image-opts=x'], spec).items[0]).toEqual({
      kind: 'error', message: "p: option '--image-opts' doesn't allow an argument",
    });
    expect(getopt(['p', '--cmd'], spec).items[0]).toEqual({ kind: 'error', message: "p: option '--cmd' requires an argument" });
  });

  it('accepts the single-dash spelling of chosen long options', () => {
    const r = getopt(['p', '-drive', 'file=x', '-c', '-drive'], { short: 'c:', long: LONG, singleDashLong: ['drive'] });
    expect(r.items).toEqual([
      { kind: 'option', key: 'drive', value: 'file=x' },
      { kind: 'option', key: 'c', value: '-drive' },
    ]);
  });

  it('stops at the first operand when asked to (POSIX getopt)', () => {
    const r = getopt(['p', '-r', 'img', '-P', '1', '0', '1'], { short: 'r', stopAtOperand: true });
    expect(r.items).toEqual([{ kind: 'option', key: 'r', value: '' }]);
    expect(r.operands).toEqual(['img', '-P', '1', '0', '1']);
  });
});
