import { describe, expect, it } from 'vitest';
import { allocatedSectors, allocatedSectorsMin } from '../../../../src/commands/img/convert.js';
import { compareSectors } from '../../../../src/commands/img/compare.js';

function sectors(pattern: string): Uint8Array {
  const buf = new Uint8Array(pattern.length * 512);
  [...pattern].forEach((c, i) => { if (c === 'D') buf[i * 512 + 7] = 1; });
  return buf;
}

describe('convert sparse detection', () => {
  it('finds runs of equal state, moving the end to an alignment boundary', () => {
    expect(allocatedSectors(sectors('DD00'), 4, 0, 1)).toEqual({ allocated: true, pnum: 2 });
    expect(allocatedSectors(sectors('00DD'), 4, 0, 1)).toEqual({ allocated: false, pnum: 2 });
    expect(allocatedSectors(sectors('DDD00000'), 8, 0, 8)).toEqual({ allocated: true, pnum: 8 });
    expect(allocatedSectors(sectors('0000000000DD'), 12, 0, 8)).toEqual({ allocated: false, pnum: 8 });
  });

  it('finds where long zero runs end and data hidden between zero first and last bytes', () => {
    const long = `${'0'.repeat(300)}D${'0'.repeat(9)}`;
    expect(allocatedSectors(sectors(long), long.length, 0, 1)).toEqual({ allocated: false, pnum: 300 });
    expect(allocatedSectors(sectors(long).subarray(300 * 512), 10, 0, 1)).toEqual({ allocated: true, pnum: 1 });
    expect(allocatedSectors(sectors('0'.repeat(260)), 260, 0, 1)).toEqual({ allocated: false, pnum: 260 });
    const middle = sectors('0D0');
    middle[512 + 7] = 0;
    middle[512 + 256] = 9;
    expect(allocatedSectors(middle, 3, 0, 1)).toEqual({ allocated: false, pnum: 1 });
    expect(allocatedSectors(middle.subarray(512), 2, 0, 1)).toEqual({ allocated: true, pnum: 1 });
  });

  it('ignores zero runs shorter than the sparse size after data', () => {
    expect(allocatedSectorsMin(sectors('DD00DD000000000000'), 18, 8, 0, 1)).toEqual({ allocated: true, pnum: 6 });
    expect(allocatedSectorsMin(sectors('00000000DD'), 10, 8, 0, 1)).toEqual({ allocated: false, pnum: 8 });
  });
});

describe('compareSectors', () => {
  it('reports the first sector state and how far it extends', () => {
    expect(compareSectors(sectors('D0D'), sectors('D0D'))).toEqual({ differs: false, pnum: 1536 });
    expect(compareSectors(sectors('DD0'), sectors('D00'))).toEqual({ differs: false, pnum: 512 });
    expect(compareSectors(sectors('0DD'), sectors('D00'))).toEqual({ differs: true, pnum: 1536 });
  });
});
