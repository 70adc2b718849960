import { describe, expect, it } from 'vitest';
import { BlkioError, errnoFromNumber, strerrorOfNumber } from '../../src/errors.js';

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
});
