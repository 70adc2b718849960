import { describe, expect, it } from 'vitest';
import { runSeed } from '../../../fuzz/qcow2.js';
import { haveQemu } from './helpers.js';

// A few sequences of the differential fuzzer (`npm run fuzz` runs many more).
describe.skipIf(!haveQemu)('qcow2 differential fuzzing (bounded)', () => {
  for (const seed of [1, 24, 71, 185]) {
    it(`seed ${seed}`, async () => {
      const r = await runSeed(seed, 30);
      expect(r.message ?? 'ok').toBe('ok');
    });
  }
});
