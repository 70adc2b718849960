import { describe, expect, it } from 'vitest';
import { LruMap } from '../../../src/drivers/lru-map.js';

describe('LruMap', () => {
  it('keeps at most its capacity, forgetting the least recently used entry', () => {
    const map = new LruMap<number, string>(2);
    map.set(1, 'a');
    map.set(2, 'b');
    expect(map.get(1)).toBe('a');
    map.set(3, 'c');
    expect(map.size).toBe(2);
    expect(map.get(2)).toBeUndefined();
    expect(map.get(1)).toBe('a');
    expect(map.get(3)).toBe('c');
    map.set(3, 'd');
    expect(map.size).toBe(2);
    expect(map.get(3)).toBe('d');
    map.delete(1);
    expect(map.get(1)).toBeUndefined();
    map.clear();
    expect(map.size).toBe(0);
  });
});
