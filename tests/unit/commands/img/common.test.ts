import { describe, expect, it } from 'vitest';
import { newLayer, scanImgArgs } from '../../../../src/commands/img/common.js';

describe('scanImgArgs and --object', () => {
  it('creates objects as the loop reaches them and hands them to newLayer', async () => {
    const { options, operands, objects } = scanImgArgs('info', ['--object', 'throttle-group,id=tg0', '-f', 'raw', 'x'], ':f:hU', []);
    expect(objects.objects.size).toBe(0);
    expect([...options]).toEqual([{ key: 'f', value: 'raw' }]);
    expect(operands).toEqual(['x']);
    const layer = newLayer(objects);
    expect([...layer.objects.keys()]).toEqual(['tg0']);
    await layer.closeAll();
  });

  it('stops at an option error before a later object', () => {
    const { options, objects } = scanImgArgs('info', ['--bogus', '--object', 'foo'], ':f:hU', []);
    const [first] = options;
    expect(first).toEqual({ key: '?', value: '--bogus' });
    expect(objects.objects.size).toBe(0);
  });

  it('ends the command with the status of the subcommand when an object fails', () => {
    const { options } = scanImgArgs('compare', ['--object', 'secret,id=s0'], ':h', [], 2);
    const stderr = process.stderr.write;
    process.stderr.write = () => true;
    try {
      expect(() => [...options]).toThrowError(expect.objectContaining({ status: 2 }));
    } finally {
      process.stderr.write = stderr;
    }
  });
});
