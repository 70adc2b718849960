import { describe, expect, it, vi } from 'vitest';
import { ExitStatus, newLayer, UsageError } from '../../../../src/commands/img/common.js';
import type { OptionItem } from '../../../../src/commands/img/getopt.js';
import { printHelp } from '../../../../src/commands/img/help.js';
import { writeStderr } from '../../../../src/cli/output.js';
import {
  FORCE_SHARE_OPTION, FORMAT_OPTION, IMAGE_OPTS_OPTION, parseImgArgs,
} from '../../../../src/commands/img/options.js';

vi.mock('../../../../src/commands/img/help.js', () => ({ printHelp: vi.fn(() => 0) }));
vi.mock('../../../../src/cli/output.js', () => ({ writeStdout: vi.fn(), writeStderr: vi.fn() }));

const LONG = [FORMAT_OPTION, IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION, { name: 'output', hasArg: true, key: 'output' }];

describe('parseImgArgs', () => {
  it('sets the shared options, short or long, and passes the rest to the subcommand in order', () => {
    const taken: OptionItem[] = [];
    const own = (item: OptionItem): boolean => {
      if (item.key !== 'output' && item.key !== 'r') return false;
      taken.push(item);
      return true;
    };
    const args = parseImgArgs('info', ['-q', '--output=json', 'x', '--format', 'raw', '-U', '--image-opts', '-r', 'all'], {
      short: ':f:hqr:U', long: LONG, own,
    });
    expect(args).toMatchObject({ format: 'raw', imageOpts: true, forceShare: true, quiet: true, operands: ['x'] });
    expect(taken).toEqual([{ key: 'output', value: 'json' }, { key: 'r', value: 'all' }]);
  });

  it('leaves everything unset without options', () => {
    const args = parseImgArgs('info', ['x'], { short: ':f:hqU', long: LONG });
    expect(args).toMatchObject({ imageOpts: false, forceShare: false, quiet: false, operands: ['x'] });
    expect(args.format).toBeUndefined();
  });

  it('lets the subcommand take a shared letter itself (compare: -f is the first image format)', () => {
    let first: string | undefined;
    const own = (item: OptionItem): boolean => {
      if (item.key !== 'f') return false;
      first = item.value;
      return true;
    };
    const args = parseImgArgs('compare', ['-f', 'raw', 'a', 'b'], { short: ':hf:', own });
    expect(first).toBe('raw');
    expect(args.format).toBeUndefined();
  });

  it('reports unknown options and missing arguments as usage errors', () => {
    expect(() => parseImgArgs('info', ['--bogus', 'x'], { short: ':f:h', long: LONG })).toThrowError(new UsageError("unrecognized option '--bogus'"));
    expect(() => parseImgArgs('info', ['-f'], { short: ':f:h', long: LONG })).toThrowError(new UsageError("missing argument for option '-f'"));
    // A letter the subcommand's getopt string lacks is unknown even when other subcommands share it.
    expect(() => parseImgArgs('create', ['-U', 'x'], { short: ':f:hq' })).toThrowError(new UsageError("unrecognized option '-U'"));
  });

  it('acts on the options in command-line order: the first help or error wins', () => {
    const fail = (item: OptionItem): boolean => {
      if (item.key === 'r') throw new UsageError('bad -r');
      return false;
    };
    expect(() => parseImgArgs('check', ['-r', 'x', '-h'], { short: ':hr:', own: fail })).toThrowError('bad -r');
    expect(printHelp).not.toHaveBeenCalled();
    let status: unknown;
    try {
      parseImgArgs('check', ['-h', '-r', 'x', '--bogus'], { short: ':hr:', own: fail });
    } catch (e) {
      status = e;
    }
    expect(status).toBeInstanceOf(ExitStatus);
    expect((status as ExitStatus).status).toBe(0);
    expect(printHelp).toHaveBeenCalledOnce();
  });

  it('creates --object objects, or refuses --object where the subcommand takes none', () => {
    const { objects } = parseImgArgs('info', ['--object', 'throttle-group,id=tg0', 'x'], { short: ':h' });
    expect([...objects.objects.keys()]).toEqual(['tg0']);
    expect(() => parseImgArgs('bench', ['--object', 'throttle-group,id=tg0', 'x'], { short: ':h', objectFailureStatus: false }))
      .toThrowError(new UsageError("unrecognized option '--object'"));
  });

  it('hands the objects to newLayer', async () => {
    const { objects, format, operands } = parseImgArgs('info', ['--object', 'throttle-group,id=tg0', '-f', 'raw', 'x'], { short: ':f:hU' });
    expect(format).toBe('raw');
    expect(operands).toEqual(['x']);
    const layer = newLayer(objects);
    expect([...layer.objects.keys()]).toEqual(['tg0']);
    await layer.closeAll();
  });

  it('stops at an option error before a later object', () => {
    expect(() => parseImgArgs('info', ['--bogus', '--object', 'foo'], { short: ':f:hU' }))
      .toThrowError(new UsageError("unrecognized option '--bogus'"));
  });

  it('ends the command with the status of the subcommand when an object fails', () => {
    expect(() => parseImgArgs('compare', ['--object', 'secret,id=s0'], { short: ':h', objectFailureStatus: 2 }))
      .toThrowError(expect.objectContaining({ status: 2 }));
    expect(writeStderr).toHaveBeenCalledWith("blkio: Either 'file' or 'data' must be provided\n");
  });
});
