import { describe, expect, it } from 'vitest';
import { parseProgressMode, Progress } from '../../../src/cli/progress.js';

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

  it('prints one line on demand (SIGUSR1) even when off', () => {
    const err = sink();
    const out = sink();
    const p = new Progress('off', { out, err, signals: false });
    p.update(1, 4);
    p.printOnDemand();
    p.finish();
    p.dispose();
    expect(err.chunks.join('')).toBe('    (25.00/100%)\n');
    expect(out.chunks).toEqual([]);
  });

  it('listens for SIGUSR1 until disposed', () => {
    const before = process.listenerCount('SIGUSR1');
    const p = new Progress('off', { out: sink(), err: sink() });
    expect(process.listenerCount('SIGUSR1')).toBe(before + 1);
    p.dispose();
    expect(process.listenerCount('SIGUSR1')).toBe(before);
  });
});
