import { describe, expect, it } from 'vitest';
import {
  amendPercent, floatPercent, convertPercent, parseProgressMode, percentText, Progress,
} from '../../../src/cli/progress.js';

function sink() {
  const chunks: string[] = [];
  return { chunks, write: (t: string) => chunks.push(t) };
}

function clock() {
  let t = 0;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

describe('parseProgressMode', () => {
  it('maps -p, --progress and -q', () => {
    expect(parseProgressMode(undefined, false)).toBe('off');
    expect(parseProgressMode(undefined, true)).toBe('human');
    expect(parseProgressMode('json', false)).toBe('json');
    expect(parseProgressMode(undefined, true, true)).toBe('off');
    expect(parseProgressMode('json', false, true)).toBe('json');
    expect(() => parseProgressMode('xml', false)).toThrow("Invalid progress format 'xml'");
  });
});

describe('Progress', () => {
  it('draws qemu-img style lines with \\r and a final newline', () => {
    const out = sink();
    const p = new Progress('human', { out, err: sink(), signals: false });
    p.update(0, 1000);
    p.update(5, 1000); // 0.5%: not enough movement
    p.update(123, 1000);
    p.update(1000, 1000);
    p.finish();
    p.dispose();
    expect(out.chunks.join('')).toBe('    (0.00/100%)\r    (12.30/100%)\r    (100.00/100%)\r\n');
  });

  it('writes JSON lines, rate limited, ending at done == total', () => {
    const err = sink();
    const c = clock();
    const p = new Progress('json', { out: sink(), err, signals: false, now: c.now });
    p.update(0, 200);
    c.advance(50);
    p.update(100, 200); // too soon
    c.advance(100);
    p.update(150, 200);
    c.advance(10);
    p.finish();
    p.dispose();
    const lines = err.chunks.join('').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines).toEqual([
      { done: 0, total: 200, elapsed_ms: 0 },
      { done: 150, total: 200, elapsed_ms: 150 },
      { done: 200, total: 200, elapsed_ms: 160 },
    ]);
  });

  it('draws a line only more than minSkip away from the last one, either way, or at 0% and 100%', () => {
    const out = sink();
    const p = new Progress('human', { out, err: sink(), signals: false, minSkip: 2 });
    for (const done of [0, 0, 15, 25, 35, 45, 46, 30, 10, 0, 1000]) p.update(done, 1000);
    p.finish({ redrawFull: true });
    expect(out.chunks.join('').split('\r')).toEqual([
      '    (0.00/100%)', '    (0.00/100%)', '    (2.50/100%)', '    (4.60/100%)', '    (1.00/100%)', '    (0.00/100%)',
      '    (100.00/100%)', '    (100.00/100%)', '\n',
    ]);
  });

  it('prints like glibc: exact ties round to even, the value is a C float', () => {
    expect([3.125, 15.625, 9.375, 0.875, 28.125, 1 / 3 * 100].map(percentText)).toEqual([
      '    (3.12/100%)', '    (15.62/100%)', '    (9.38/100%)', '    (0.88/100%)', '    (28.12/100%)', '    (33.33/100%)',
    ]);
    // 100 * 1462 / 1491 is 98.054996... in double, 98.055000305... in float.
    expect(percentText(convertPercent(1462, 1491))).toBe('    (98.06/100%)');
    expect(floatPercent(1, 3)).toBe(Math.fround(Math.fround(1 / 3) * 100));
    expect(amendPercent(1, 3)).toBe(Math.fround(100 / 3));
    expect(convertPercent(5, 0)).toBe(0);
  });

  it('prints a line for SIGUSR1 without -p at the next due update, on stderr', () => {
    const err = sink();
    const out = sink();
    const p = new Progress('off', { out, err, signals: false });
    p.update(1, 4);
    p.printOnDemand();
    p.update(1, 4); // not past the last due line (25%)
    p.update(2, 4);
    p.update(3, 4);
    p.printOnDemand();
    p.finish();
    p.dispose();
    expect(err.chunks.join('')).toBe('    (50.00/100%)\n    (100.00/100%)\n');
    expect(out.chunks).toEqual([]);
  });

  it('ignores SIGUSR1 with -p, as qemu-img does', () => {
    const out = sink();
    const err = sink();
    const p = new Progress('human', { out, err, signals: false });
    p.update(1, 4);
    p.printOnDemand();
    p.update(1, 4);
    p.end();
    expect(out.chunks.join('')).toBe('    (25.00/100%)\r\n');
    expect(err.chunks).toEqual([]);
  });

  it('listens for SIGUSR1 until disposed', () => {
    const before = process.listenerCount('SIGUSR1');
    const p = new Progress('off', { out: sink(), err: sink() });
    expect(process.listenerCount('SIGUSR1')).toBe(before + 1);
    p.dispose();
    expect(process.listenerCount('SIGUSR1')).toBe(before);
  });
});
