import { describe, expect, it } from 'vitest';
import { GHashKeySet } from '../../../src/options/ghash.js';
import { qdictKeyOrder } from '../../../src/options/json.js';

/** The key QEMU 7.2 names as unexpected: its dictionary's keys in a GHashTable, the visited ones removed. */
function firstLeft(keys: string[], visited: string[]): string | undefined {
  const set = new GHashKeySet(qdictKeyOrder(keys));
  for (const key of visited) set.delete(key);
  return set.first();
}

describe('GHashKeySet', () => {
  it('iterates as GLib does (orders observed with qemu-storage-daemon 7.2)', () => {
    const base = ['driver', 'node-name', 'filename'];
    expect(firstLeft([...base, 'bogus', 'bogus2'], base)).toBe('bogus2');
    expect(firstLeft([...base, 'zzz', 'aaa', 'mmm'], base)).toBe('mmm');
    // Enough keys to make the table grow, and shrink again as the visited ones go.
    expect(firstLeft([...base, 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7', 'k8', 'k9'], base)).toBe('k6');
    const greek = 'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon phi chi psi omega';
    expect(firstLeft(['driver', 'node-name', ...greek.split(' ')], ['driver', 'node-name'])).toBe('psi');
  });

  it('forgets removed keys and survives shrinking', () => {
    const keys = Array.from({ length: 40 }, (_, i) => `key${i}`);
    const set = new GHashKeySet(keys);
    for (const key of keys.slice(0, 39)) expect(set.delete(key)).toBe(true);
    expect(set.delete('key0')).toBe(false);
    expect(set.first()).toBe('key39');
    set.delete('key39');
    expect(set.first()).toBeUndefined();
  });
});
