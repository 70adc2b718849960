import { describe, expect, it } from 'vitest';
import { scanArgs } from '../../../../src/commands/img/getopt.js';

const LONG = [{ name: 'output', hasArg: true, key: 'output' }, { name: 'shrink', hasArg: false, key: 'shrink' }];

describe('scanArgs (glibc getopt_long as qemu-img uses it)', () => {
  it('mixes options and operands, clusters short options, and stops at --', () => {
    const r = scanArgs('info', ['a', '-qf', 'raw', 'b', '-fqcow2', '--', '-c'], ':f:q', LONG);
    expect(r.options).toEqual([{ key: 'q', value: '' }, { key: 'f', value: 'raw' }, { key: 'f', value: 'qcow2' }]);
    expect(r.operands).toEqual(['a', 'b', '-c']);
  });

  it('takes long arguments inline or from the next word, and accepts unique prefixes', () => {
    expect(scanArgs('info', ['--output=json', '--out', 'human', '--shr'], '', LONG).options).toEqual([
      { key: 'output', value: 'json' }, { key: 'output', value: 'human' }, { key: 'shrink', value: '' },
    ]);
  });

  it('reports unknown options and missing arguments with the word qemu-img names', () => {
    expect(scanArgs('info', ['-z', '--bogus', '--shrink=1', '-f'], ':f:', LONG).options).toEqual([
      { key: '?', value: '-z' }, { key: '?', value: '--bogus' }, { key: '?', value: '--shrink=1' }, { key: ':', value: '-f' },
    ]);
    expect(scanArgs('info', ['--output'], '', LONG).options).toEqual([{ key: ':', value: '--output' }]);
  });
});

describe('the argument qemu-img names for a bad letter', () => {
  it('is the subcommand when the bad letter is inside the first group (glibc argv[optind - 1])', () => {
    expect(scanArgs('info', ['-xq', 'foo'], ':f:q').options[0]).toEqual({ key: '?', value: 'info' });
    expect(scanArgs('info', ['-q', '-xq', 'foo'], ':f:q').options[1]).toEqual({ key: '?', value: '-q' });
    expect(scanArgs('info', ['-x', 'foo'], ':f:q').options[0]).toEqual({ key: '?', value: '-x' });
  });
});
