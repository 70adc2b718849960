import { describe, expect, it } from 'vitest';
import { BlkioError, errnoError, errnoFromNumber, strerrorOfNumber } from '../../src/errors.js';

describe('errno numbers', () => {
  it('gives glibc texts for numbers without a name here', () => {
    expect(strerrorOfNumber(3)).toBe('No such process');
    expect(strerrorOfNumber(133)).toBe('Memory page has hardware error');
    expect(strerrorOfNumber(134)).toBe('Unknown error 134');
    expect(strerrorOfNumber(41)).toBe('Unknown error 41');
  });

  it('keeps named codes and carries unnamed numbers through prepend', () => {
    expect(errnoFromNumber(28).code).toBe('ENOSPC');
    const e = errnoFromNumber(122);
    expect(e.code).toBe('EIO');
    expect(e.message).toBe('Disk quota exceeded');
    expect(e.prepend('x: ').strerror).toBe('Disk quota exceeded');
    expect(e.errnoNumber).toBe(122);
    expect(new BlkioError('ENOSPC').errnoNumber).toBe(28);
  });

  it("writes error_setg_errno's text: the message, then the strerror of what was thrown, with its code", () => {
    const fromBlkio = errnoError('Failed to update the image size', new BlkioError('ENOSPC', 'other text'));
    expect([fromBlkio.code, fromBlkio.message]).toEqual(['ENOSPC', 'Failed to update the image size: No space left on device']);
    const fromNode = errnoError("Could not open 'x'", Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT' }));
    expect([fromNode.code, fromNode.message]).toEqual(['ENOENT', "Could not open 'x': No such file or directory"]);
    expect(errnoError('Mapping clusters failed', new Error('odd')).message).toBe('Mapping clusters failed: Input/output error');
  });
});
