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

  it("warns once about a hex size's suffix and fails a bad value in QemuOpts wording", () => {
    const values = parseCreateOptions(undefined, SPECS);
    const warnings: string[] = [];
    setCreateOption(values, SPECS, 'size', '0x1M', (w) => warnings.push(w));
    expect(values.get('size')).toMatchObject({ value: 1048576, exact: 1048576n, printed: '1048576' });
    expect(warnings).toHaveLength(1);
    expect(() => setCreateOption(values, SPECS, 'refcount_bits', '1k')).toThrowError("Parameter 'refcount_bits' expects a number");
    expect(() => setCreateOption(values, SPECS, 'size', '-1')).toThrowError("Parameter 'size' expects a non-negative number below 2^64");
  });
});
