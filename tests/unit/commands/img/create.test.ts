import { describe, expect, it } from 'vitest';
import { parseCreateOptions, setCreateOption } from '../../../../src/commands/img/create.js';
import type { CreateOptionSpec } from '../../../../src/block/driver.js';

const SPECS: CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: '' },
  { name: 'refcount_bits', type: 'number', help: '' },
  { name: 'backing_file', type: 'string', help: '' },
];

describe('create option values', () => {
  it('prints numbers and sizes exactly, as signed 64-bit values', () => {
    const values = parseCreateOptions('size=9223372036854775807,refcount_bits=-1,backing_file=a,,b', SPECS);
    expect(values.get('size')?.printed).toBe('9223372036854775807');
    expect(values.get('size')?.exact).toBe(2n ** 63n - 1n);
    expect(values.get('refcount_bits')?.printed).toBe('-1');
    expect(values.get('backing_file')?.printed).toBe('a,,b');
  });

  it('keeps a size given beyond 2^53 exactly', () => {
    const values = parseCreateOptions(undefined, SPECS);
    setCreateOption(values, SPECS, 'size', String(9007199254740993n));
    expect(values.get('size')?.printed).toBe('9007199254740993');
  });
});
