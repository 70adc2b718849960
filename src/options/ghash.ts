/**
 * The iteration order of a GLib hash table of strings (GHashTable with g_str_hash), which
 * decides which of several unknown keys QEMU's QAPI input visitor names: it puts a
 * dictionary's keys into such a table, removes each member it visits, and reports the first
 * key left. Only the order matters here, so the table holds keys and no values; slots, probing,
 * tombstones and resizing follow GLib's open addressing so that the order comes out the same.
 */

/** GLib's modulus for each table size 2^shift (a prime just below it). */
const PRIME_MOD = [
  1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
  262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213, 33554393, 67108859, 134217689,
  268435399, 536870909, 1073741789, 2147483647,
];
const MIN_SHIFT = 3;
const UNUSED = 0;
const TOMBSTONE = 1;

/** g_str_hash (djb2 over the UTF-8 bytes read as signed char); 0 and 1 mark free slots, so they become 2. */
function strHash(key: string): number {
  let h = 5381;
  for (const byte of Buffer.from(key, 'utf8')) h = (Math.imul(h, 33) + (byte < 128 ? byte : byte - 256)) >>> 0;
  return h <= TOMBSTONE ? 2 : h;
}

/** Bits needed for n (g_hash_table_find_closest_shift). */
function closestShift(n: number): number {
  let shift = 0;
  for (; n > 0; n >>= 1) shift++;
  return shift;
}

export class GHashKeySet {
  private size = 0;
  private mod = 0;
  private hashes: number[] = [];
  private keys: Array<string | undefined> = [];
  private nnodes = 0;
  private noccupied = 0;

  constructor(keys: Iterable<string> = []) {
    this.setShift(MIN_SHIFT);
    this.hashes = new Array<number>(this.size).fill(UNUSED);
    for (const key of keys) this.add(key);
  }

  private setShift(shift: number): void {
    this.size = 1 << shift;
    this.mod = PRIME_MOD[shift]!;
  }

  private toIndex(hash: number): number {
    return (Math.imul(hash, 11) >>> 0) % this.mod;
  }

  /** The key's slot, or where it would go (the first tombstone passed, else the free slot). */
  private lookup(key: string, hash: number): number {
    let index = this.toIndex(hash);
    let firstTombstone = -1;
    for (let step = 1; this.hashes[index] !== UNUSED; step++) {
      if (this.hashes[index] === hash && this.keys[index] === key) return index;
      if (this.hashes[index] === TOMBSTONE && firstTombstone < 0) firstTombstone = index;
      index = (index + step) & (this.size - 1);
    }
    return firstTombstone >= 0 ? firstTombstone : index;
  }

  add(key: string): void {
    const hash = strHash(key);
    const index = this.lookup(key, hash);
    const old = this.hashes[index]!;
    if (old > TOMBSTONE) return;
    this.hashes[index] = hash;
    this.keys[index] = key;
    this.nnodes++;
    if (old === UNUSED) {
      this.noccupied++;
      this.maybeResize();
    }
  }

  delete(key: string): boolean {
    const index = this.lookup(key, strHash(key));
    if (this.hashes[index]! <= TOMBSTONE) return false;
    this.hashes[index] = TOMBSTONE;
    this.keys[index] = undefined;
    this.nnodes--;
    this.maybeResize();
    return true;
  }

  /** The first key in iteration order (slot order). */
  first(): string | undefined {
    for (let i = 0; i < this.size; i++) if (this.hashes[i]! > TOMBSTONE) return this.keys[i];
    return undefined;
  }

  private maybeResize(): void {
    const { size, noccupied } = this;
    if ((size > this.nnodes * 4 && size > 1 << MIN_SHIFT) || size <= noccupied + Math.floor(noccupied / 16)) this.resize();
  }

  /**
   * GLib resizes in place: each entry not yet moved is placed by probing over the slots already
   * claimed in this pass, evicting whatever entry sat there, which is placed next.
   */
  private resize(): void {
    const oldSize = this.size;
    this.setShift(Math.max(closestShift(Math.trunc(this.nnodes * 1.333)), MIN_SHIFT));
    const slots = Math.max(oldSize, this.size);
    for (let i = oldSize; i < slots; i++) this.hashes[i] = UNUSED;
    const placed = new Array<boolean>(slots).fill(false);
    for (let i = 0; i < oldSize; i++) {
      let hash = this.hashes[i]!;
      if (hash <= TOMBSTONE) {
        this.hashes[i] = UNUSED;
        continue;
      }
      if (placed[i]) continue;
      this.hashes[i] = UNUSED;
      let key = this.keys[i];
      this.keys[i] = undefined;
      for (;;) {
        let index = this.toIndex(hash);
        for (let step = 1; placed[index]; step++) index = (index + step) & (this.size - 1);
        placed[index] = true;
        const evictedHash = this.hashes[index]!;
        const evictedKey = this.keys[index];
        this.hashes[index] = hash;
        this.keys[index] = key;
        if (evictedHash <= TOMBSTONE) break;
        hash = evictedHash;
        key = evictedKey;
      }
    }
    this.hashes.length = this.size;
    this.keys.length = this.size;
    this.noccupied = this.nnodes;
  }
}
