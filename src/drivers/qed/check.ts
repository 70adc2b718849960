/**
 * QED's consistency check (qemu-img check, and the repair of an image opened read-write after
 * it was not closed cleanly): every cluster referenced once, table and cluster offsets valid
 * (`fix` clears invalid ones), unreferenced clusters counted as leaks (never freed).
 */
import { toBlkioError, type BlkioError } from '../../errors.js';
import type { CheckResult } from '../../block/driver.js';
import { F_NEED_CHECK, HEADER_BYTES, serializeHeader } from './header.js';
import { clusterEntry, isClusterOffsetValid, isTableOffsetValid, loadL2Table, setClusterEntry, type QedState } from './tables.js';

interface Checking {
  s: QedState;
  fix: boolean;
  result: CheckResult;
  /** One flag per cluster of the file: referenced already. */
  used: Uint8Array;
}

/** Mark `n` clusters from `offset` referenced; false when one already was (a corruption). */
function markUsed(c: Checking, offset: number, n: number): boolean {
  const first = offset / c.s.header.clusterSize;
  let twice = 0;
  for (let i = first; i < first + n; i++) {
    if (c.used[i]) twice++;
    c.used[i] = 1;
  }
  c.result.corruptions += twice;
  return twice === 0;
}

/** Count an invalid entry as a corruption, or clear it as fixed. */
function invalidEntry(c: Checking, table: Uint8Array, index: number): void {
  if (c.fix) {
    setClusterEntry(table, index, 0);
    c.result.corruptionsFixed++;
  } else {
    c.result.corruptions++;
  }
}

/** Check an L2 table's data clusters; returns how many entries were invalid. */
function checkL2Table(c: Checking, table: Uint8Array): number {
  const cs = c.s.header.clusterSize;
  let invalid = 0;
  let last = 0;
  for (let i = 0; i < c.s.tableEntries; i++) {
    const offset = clusterEntry(table, i);
    if (offset <= 1) continue;
    c.result.allocatedClusters++;
    if (last && last + cs !== offset) c.result.fragmentedClusters++;
    last = offset;
    if (!isClusterOffsetValid(c.s, offset)) {
      invalidEntry(c, table, i);
      invalid++;
      continue;
    }
    markUsed(c, offset, 1);
  }
  return invalid;
}

/** Walk the L1 table and its L2 tables; returns the last I/O error met (after counting it), if any. */
async function checkTables(c: Checking): Promise<BlkioError | undefined> {
  const s = c.s;
  let lastError: BlkioError | undefined;
  const failed = (e: unknown): void => {
    c.result.checkErrors++;
    lastError = toBlkioError(e);
  };
  markUsed(c, s.header.l1TableOffset, s.header.tableSize);
  let invalidL1 = 0;
  for (let i = 0; i < s.tableEntries; i++) {
    const offset = clusterEntry(s.l1, i);
    if (offset === 0) continue;
    if (!isTableOffsetValid(s, offset)) {
      invalidEntry(c, s.l1, i);
      invalidL1++;
      continue;
    }
    if (!markUsed(c, offset, s.header.tableSize)) continue;
    let table: Uint8Array;
    try {
      table = await loadL2Table(s, offset);
    } catch (e) {
      failed(e);
      continue;
    }
    if (checkL2Table(c, table) > 0 && c.fix) await s.file.write(offset, table.length, table).catch(failed);
  }
  if (invalidL1 > 0 && c.fix) await s.file.write(s.header.l1TableOffset, s.l1.length, s.l1).catch(failed);
  return lastError;
}

export async function checkImage(s: QedState, fix: boolean): Promise<CheckResult> {
  const cs = s.header.clusterSize;
  const nclusters = s.fileSize / cs;
  const c: Checking = {
    s, fix, used: new Uint8Array(nclusters),
    result: {
      corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0,
      totalClusters: Math.ceil(s.header.imageSize / cs), allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0,
    },
  };
  const error = await checkTables(c);
  if (error) throw error;
  for (let i = s.header.headerSize; i < nclusters; i++) if (!c.used[i]) c.result.leaks++;
  // A repaired (or consistent) image no longer needs a check at open.
  if (fix && c.result.corruptions === 0 && c.result.checkErrors === 0 && s.header.features & F_NEED_CHECK) {
    await s.file.flush();
    s.header.features &= ~F_NEED_CHECK;
    await s.file.write(0, HEADER_BYTES, serializeHeader(s.header));
  }
  return c.result;
}
