/**
 * An open VHDX image and its header updates. Every update writes the header not in use with
 * the next sequence number, so a torn write leaves the other one valid; QEMU always updates
 * both in turn, and so does blkio, in the same order, so the files stay alike.
 */
import type { BdrvChild } from '../../block/child.js';
import { Mutex } from '../../block/mutex.js';
import { view } from '../format-helpers.js';
import { H, HEADER1_OFFSET, HEADER2_OFFSET, HEADER_BLOCK_BYTES, HEADER_BYTES, newGuid, setChecksum } from './format.js';

/** The log: a circular buffer of 4 KiB sectors in the file; `read`/`write` are byte offsets in it. */
export interface LogPosition {
  offset: number;
  length: number;
  read: number;
  write: number;
  /** The sequence number of the next entry written. */
  sequence: bigint;
  /** Where the last entry written ends: the next entry names it as the sequence's tail. */
  tail: number;
}

export interface VhdxState {
  file: BdrvChild;
  /** Both headers' defined bytes as read (valid or not); an update rewrites one of them. */
  headers: [Uint8Array, Uint8Array];
  current: 0 | 1;
  /** The file write GUID every header update of this open writes. */
  sessionGuid: Uint8Array;
  /** No guest-visible write yet: the first one gives both headers a new data write GUID. */
  firstVisibleWrite: boolean;
  log: LogPosition;
  logReplayedOnOpen: boolean;
  blockSize: number;
  chunkRatio: number;
  /** The disk size in whole sectors. */
  length: number;
  batOffset: number;
  batEntries: number;
  /** The BAT as on disk (little-endian 64-bit entries), the whole region. */
  bat: Uint8Array;
  batView: DataView;
  /** Regions of the file the BAT must not point into (log, BAT, metadata), the newest first. */
  regions: Array<{ start: number; end: number }>;
  lock: Mutex;
}

export function currentHeader(s: VhdxState): Uint8Array {
  return s.headers[s.current];
}

/** Write the header not in use, one past the current sequence number, and make it current. */
async function updateHeader(s: VhdxState, newDataWriteGuid: boolean, logGuid: Uint8Array | undefined): Promise<void> {
  const target: 0 | 1 = s.current === 0 ? 1 : 0;
  const header = s.headers[target];
  const v = view(header);
  v.setBigUint64(H.sequence, view(s.headers[s.current]).getBigUint64(H.sequence, true) + 1n, true);
  header.set(s.sessionGuid, H.fileWriteGuid);
  if (newDataWriteGuid) header.set(newGuid(), H.dataWriteGuid);
  if (logGuid) header.set(logGuid, H.logGuid);
  const offset = target === 0 ? HEADER1_OFFSET : HEADER2_OFFSET;
  // The checksum covers the whole 4 KiB block, whose bytes past the header stay as they are.
  const block = new Uint8Array(HEADER_BLOCK_BYTES);
  await s.file.read(offset, HEADER_BLOCK_BYTES, block);
  block.set(header);
  setChecksum(block, H.checksum);
  header.set(block.subarray(0, HEADER_BYTES));
  await s.file.write(offset, HEADER_BYTES, block.subarray(0, HEADER_BYTES));
  await s.file.flush();
  s.current = target;
}

export async function updateHeaders(s: VhdxState, newDataWriteGuid: boolean, logGuid?: Uint8Array): Promise<void> {
  await updateHeader(s, newDataWriteGuid, logGuid);
  await updateHeader(s, newDataWriteGuid, logGuid);
}

/** Before the first change a guest can see, both headers get a new data write GUID. */
export async function userVisibleWrite(s: VhdxState): Promise<void> {
  if (!s.firstVisibleWrite) return;
  s.firstVisibleWrite = false;
  await updateHeaders(s, true);
}
