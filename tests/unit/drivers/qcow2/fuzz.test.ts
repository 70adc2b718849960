import { describe, expect, it } from 'vitest';
import { runSeed } from '../../../fuzz/qcow2.js';
import { haveQemu } from './helpers.js';

// A few sequences of the differential fuzzer (`npm run fuzz` runs many more), and seeds that
// once failed with `npm run fuzz`'s 40 operations.
const REGRESSIONS: Array<[seed: number, what: string]> = [
  [100137, 'a freed compressed host cluster reused for data must not take more compressed data'],
  [200058, 'QEMU corrupts the image on the way and heals it later; blkio stays clean'],
  [300296, 'a ninth chunk of one write waits for the oldest chunk only, as QEMU\'s worker pool does'],
];

describe.skipIf(!haveQemu)('qcow2 differential fuzzing (bounded)', () => {
  // 71 and 60041 run on backing chains of three layers (60041's bottom one raw).
  for (const seed of [1, 24, 71, 185, 60041]) {
    it(`seed ${seed}`, async () => {
      const r = await runSeed(seed, 30);
      expect(r.message ?? 'ok').toBe('ok');
    });
  }
  for (const [seed, what] of REGRESSIONS) {
    it(`seed ${seed}: ${what}`, async () => {
      const r = await runSeed(seed, 40);
      expect(r.message ?? 'ok').toBe('ok');
    });
  }
});
