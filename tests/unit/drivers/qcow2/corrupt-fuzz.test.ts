import { describe, expect, it } from 'vitest';
import { runSeed } from '../../../fuzz/corrupt.js';
import { haveQemu } from './helpers.js';

// Seeds of the corruption fuzzer (`npm run fuzz -- corrupt` runs many more) that once failed.
const REGRESSIONS: Array<[seed: number, what: string]> = [
  [1005, 'an L1 entry pointing beyond 2^53 reads zeros in check; read-only corruption is non-fatal'],
  [1013, 'a read-only map reports an unaligned cluster as non-fatal'],
  [1023, 'an unknown encryption method'],
  [1042, 'a new L2 table over a refcount table grown by its header field is refused'],
  [2009, 'an L1 entry of offset 0 with the COPIED flag'],
  [2029, 'a backing file name read from inside the header ends at its first NUL'],
  [2033, 'check -r all stops where a COPIED repair would overwrite the L1 table; compressed offsets beyond 2^53'],
  [2014, 'a size within an L2 table of 2^64 wraps the L1 index and fails on the sector count'],
  [2025, 'a size not a multiple of 512 drops the partial sector'],
  [2048, 'a bitmaps extension of the wrong length'],
  [2055, 'a backing format extension retyped as bitmaps extension'],
  [3011, 'check -r all repairs an unaligned preallocated cluster; inside the header the overlap check ends the check'],
  [3035, 'a crypto header extension in an image without LUKS encryption'],
  [3043, 'a write into an L2 table beyond 2^53 fails as the file system would (File too large), and close reports each cache flush'],
  [3024, 'a snapshot L1 offset beyond 2^53 keeps its low bits (check reports it unaligned)'],
  [610589, 'a write refused as overlapping metadata is checked under its allocation\'s lock hold: reported once'],
  [610600, 'a write refused as overlapping metadata is undone before earlier chunks link theirs: refcounts as in QEMU'],
  [610607, 'a compressed entry with the COPIED flag and a subcluster bitmap: the bitmap error shows it without the flag'],
  [610641, 'freeing an overwritten compressed cluster without refcounts is only reported (qcow2_free_clusters failed)'],
  [610642, 'the metadata preallocation check of a sparse file reports an unaligned refcount block'],
  [610698, 'check opens an image whose header has no refcount table clusters'],
  [610675, 'check prints a region at offset 0 beyond the end of the file as 0x0'],
  [610770, 'freeing an old cluster at an unaligned offset is refused as non-fatal corruption (it freed the header cluster)'],
  [610597, 'an unknown autoclear bit is cleared at a read-write open, before the image file would otherwise have its permissions'],
  [610840, 'a backing file named in UTF-8 (bäse.img) is read, shown and opened by its bytes'],
];

describe.skipIf(!haveQemu)('qcow2 corruption fuzzing (bounded)', () => {
  for (const [seed, what] of REGRESSIONS) {
    it(`seed ${seed}: ${what}`, async () => {
      const r = await runSeed(seed);
      expect(r.message ?? 'ok').toBe('ok');
    }, 60_000);
  }
});
