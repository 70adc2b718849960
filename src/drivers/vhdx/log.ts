/**
 * The VHDX metadata log: a circular buffer of 4 KiB sectors holding entries (a header, 32-byte
 * descriptors, then data sectors) that describe metadata writes. A BAT update goes through it
 * as in QEMU 7.2: one entry is written, then replayed at once, and the log marked empty again.
 * An image opened with a valid sequence of entries (a dirty log) has it replayed before use,
 * or refused when read-only.
 */
import { BlkioError } from '../../errors.js';
import { crc32cFinish, crc32cUpdate, CRC32C_INITIAL } from '../../crc32c.js';
import { view } from '../format-helpers.js';
import { H, headerGuid, isZeroGuid, MiB, newGuid, setChecksum } from './format.js';
import { currentHeader, updateHeaders, userVisibleWrite, type LogPosition, type VhdxState } from './state.js';

const LOG_SECTOR = 4096;
const ENTRY_SIGNATURE = 0x65676f6c; // 'loge'
const DESC_SIGNATURE = 0x63736564; // 'desc'
const ZERO_SIGNATURE = 0x6f72657a; // 'zero'
const DATA_SIGNATURE = 0x61746164; // 'data'
const ENTRY_HEADER_BYTES = 64;
const DESC_BYTES = 32;

/** Entry header fields by byte offset. */
const E = {
  signature: 0, checksum: 4, entryLength: 8, tail: 12, sequence: 16, descriptorCount: 24, logGuid: 32,
  flushedFileOffset: 48, lastFileOffset: 56,
} as const;

/** Descriptor fields by byte offset (from the descriptor's start). */
const D = { signature: 0, trailingBytes: 4, leadingBytes: 8, zeroLength: 8, fileOffset: 16, sequence: 24 } as const;

interface EntryHeader {
  entryLength: number;
  sequence: bigint;
  descriptorCount: number;
  flushedFileOffset: bigint;
  lastFileOffset: bigint;
}

function invalid(): BlkioError {
  return new BlkioError('EINVAL');
}

function nextIndex(index: number, length: number): number {
  const next = index + LOG_SECTOR;
  return next >= length ? 0 : next;
}

/** Sectors the header and `count` descriptors fill (the header takes two descriptors' room). */
function descriptorSectors(count: number): number {
  return Math.ceil((count + 2) / 128);
}

async function readLogSector(s: VhdxState, at: number): Promise<Uint8Array> {
  const buf = new Uint8Array(LOG_SECTOR);
  await s.file.read(s.log.offset + at, LOG_SECTOR, buf);
  return buf;
}

/** The entry header at the read index, without moving it (an entry never starts in the last 64 bytes). */
async function peekHeader(s: VhdxState, log: LogPosition): Promise<EntryHeader | undefined> {
  const read = log.read + ENTRY_HEADER_BYTES > log.length ? 0 : log.read;
  if (read === log.write) throw invalid();
  const bytes = new Uint8Array(ENTRY_HEADER_BYTES);
  await s.file.read(log.offset + read, ENTRY_HEADER_BYTES, bytes);
  return parseEntryHeader(s, log, bytes);
}

/** The header's fields, or undefined where QEMU takes it for no entry. */
function parseEntryHeader(s: VhdxState, log: LogPosition, bytes: Uint8Array): EntryHeader | undefined {
  const v = view(bytes);
  const h: EntryHeader = {
    entryLength: v.getUint32(E.entryLength, true), sequence: v.getBigUint64(E.sequence, true),
    descriptorCount: v.getUint32(E.descriptorCount, true), flushedFileOffset: v.getBigUint64(E.flushedFileOffset, true),
    lastFileOffset: v.getBigUint64(E.lastFileOffset, true),
  };
  const logGuid = headerGuid(currentHeader(s), H.logGuid);
  const valid = v.getUint32(E.signature, true) === ENTRY_SIGNATURE && h.entryLength <= log.length &&
    h.entryLength % LOG_SECTOR === 0 && h.sequence !== 0n &&
    bytes.subarray(E.logGuid, E.logGuid + 16).every((b, i) => b === logGuid[i]) &&
    h.descriptorCount * DESC_BYTES <= h.entryLength;
  return valid ? h : undefined;
}

/** Up to `count` sectors from the read index (fewer where it meets the write index), moving it on. */
async function readSectors(s: VhdxState, log: LogPosition, count: number): Promise<Uint8Array[]> {
  const sectors: Uint8Array[] = [];
  while (sectors.length < count && log.read !== log.write) {
    sectors.push(await readLogSector(s, log.read));
    log.read = nextIndex(log.read, log.length);
  }
  return sectors;
}

/** The header and descriptor sectors of the entry at the read index, each descriptor checked. */
async function readDescriptors(s: VhdxState, log: LogPosition): Promise<{ header: EntryHeader; sectors: Uint8Array[] }> {
  const header = await peekHeader(s, log);
  if (!header) throw invalid();
  const count = descriptorSectors(header.descriptorCount);
  const sectors = await readSectors(s, log, count);
  if (sectors.length !== count) throw invalid();
  for (let i = 0; i < header.descriptorCount; i++) {
    const d = descriptorAt(sectors, i);
    const v = view(d);
    const signature = v.getUint32(D.signature, true);
    const valid = v.getBigUint64(D.sequence, true) === header.sequence && v.getBigUint64(D.fileOffset, true) % 4096n === 0n &&
      ((signature === ZERO_SIGNATURE && v.getBigUint64(D.zeroLength, true) % 4096n === 0n) || signature === DESC_SIGNATURE);
    if (!valid) throw invalid();
  }
  return { header, sectors };
}

function descriptorAt(sectors: Uint8Array[], index: number): Uint8Array {
  const at = ENTRY_HEADER_BYTES + index * DESC_BYTES;
  const sector = sectors[Math.floor(at / LOG_SECTOR)]!;
  return sector.subarray(at % LOG_SECTOR, (at % LOG_SECTOR) + DESC_BYTES);
}

/**
 * Whether a whole valid entry starts at the read index (with the sequence number after `previous`,
 * unless that is 0), checksum included; the read index moves past what was looked at.
 */
async function validateEntry(s: VhdxState, log: LogPosition, previous: bigint): Promise<EntryHeader | undefined> {
  const header = await peekHeader(s, log);
  if (!header || (previous > 0n && header.sequence !== previous + 1n)) {
    log.read = nextIndex(log.read, log.length);
    return undefined;
  }
  const { sectors } = await readDescriptors(s, log);
  const first = sectors[0]!.slice();
  first.fill(0, E.checksum, E.checksum + 4);
  let crc = crc32cUpdate(CRC32C_INITIAL, first);
  for (const sector of sectors.slice(1)) crc = crc32cUpdate(crc, sector);
  const dataSectors = header.entryLength / LOG_SECTOR - sectors.length;
  for (let i = 0; i < dataSectors; i++) {
    const [sector] = await readSectors(s, log, 1);
    if (!sector) return undefined;
    crc = crc32cUpdate(crc, sector);
  }
  return crc32cFinish(crc) === view(sectors[0]!).getUint32(E.checksum, true) ? header : undefined;
}

/** A run of valid entries: `log` reads from its first to past its last. */
interface LogSequence {
  log: LogPosition;
  count: number;
  first: EntryHeader;
}

/**
 * The active sequence of entries: the whole buffer is scanned for runs of valid entries, and
 * the run whose first entry has the highest sequence number wins (QEMU's search, including its
 * leniency: the entry after a run's first is taken with any sequence number).
 */
async function searchLog(s: VhdxState): Promise<LogSequence | undefined> {
  const scan: LogPosition = { ...s.log, write: s.log.length, read: 0 };
  let best: LogSequence | undefined;
  for (;;) {
    const tail = scan.read;
    const first = await validateEntry(s, scan, 0n);
    if (first) {
      const run: LogSequence = { log: { ...scan, read: tail, write: scan.read }, count: 1, first };
      let previous = 0n;
      for (;;) {
        const next = await validateEntry(s, scan, previous);
        if (!next) break;
        run.log.write = scan.read;
        run.count++;
        previous = next.sequence;
      }
      if (!best || run.first.sequence > best.first.sequence) best = run;
    }
    // Past the buffer's end, the scan is done; so it is back where it started (entries that fill
    // the whole buffer, where QEMU's scan would go round forever).
    if (scan.read < tail || (first && scan.read === tail)) break;
  }
  if (best) s.log.sequence = best.first.sequence + 1n;
  return best;
}

/** Write what one descriptor describes into the file. */
async function applyDescriptor(s: VhdxState, d: Uint8Array, data: Uint8Array | undefined): Promise<void> {
  const v = view(d);
  let fileOffset = Number(v.getBigUint64(D.fileOffset, true));
  const sector = new Uint8Array(LOG_SECTOR);
  let count = 1;
  if (v.getUint32(D.signature, true) === DESC_SIGNATURE) {
    const dv = view(data!);
    const sequence = (BigInt(dv.getUint32(4, true)) << 32n) | BigInt(dv.getUint32(LOG_SECTOR - 4, true));
    if (sequence !== v.getBigUint64(D.sequence, true)) throw invalid();
    sector.set(d.subarray(D.leadingBytes, D.leadingBytes + 8), 0);
    sector.set(data!.subarray(8, LOG_SECTOR - 4), 8);
    sector.set(d.subarray(D.trailingBytes, D.trailingBytes + 4), LOG_SECTOR - 4);
  } else {
    count = Number(v.getBigUint64(D.zeroLength, true) / 4096n);
  }
  for (let i = 0; i < count; i++, fileOffset += LOG_SECTOR) {
    await s.file.write(fileOffset, LOG_SECTOR, sector);
    await s.file.flush();
  }
}

/** Replay the entries of `sequence` into the file, then mark the log empty. */
async function replay(s: VhdxState, log: LogPosition, count: number): Promise<void> {
  await userVisibleWrite(s);
  for (let n = 0; n < count; n++) {
    const peeked = await peekHeader(s, log);
    const fileLength = s.file.getLength();
    if (peeked && peeked.flushedFileOffset > BigInt(fileLength)) throw invalid();
    const { header, sectors } = await readDescriptors(s, log);
    for (let i = 0; i < header.descriptorCount; i++) {
      const d = descriptorAt(sectors, i);
      let data: Uint8Array | undefined;
      if (view(d).getUint32(D.signature, true) === DESC_SIGNATURE) {
        [data] = await readSectors(s, log, 1);
        if (!data) throw invalid();
      }
      await applyDescriptor(s, d, data);
    }
    // QEMU grows the file only when the last offset is no whole MiB, and ignores a failure.
    const last = header.lastFileOffset;
    if (BigInt(fileLength) < last && last % BigInt(MiB) !== 0n) {
      await s.file.truncate(Number((last / BigInt(MiB) + 1n) * BigInt(MiB)), false).catch(() => undefined);
    }
  }
  await s.file.flush();
  s.log.read = 0;
  s.log.write = 0;
  await updateHeaders(s, false, new Uint8Array(16));
}

/**
 * Open-time handling of the log the current header names: checked as QEMU does, and a dirty
 * log replayed (read-write) or refused (read-only). Returns whether it was replayed.
 */
export async function openLog(s: VhdxState, readOnly: boolean, filename: string): Promise<boolean> {
  const header = view(currentHeader(s));
  s.log = {
    offset: Number(header.getBigUint64(H.logOffset, true)), length: header.getUint32(H.logLength, true),
    read: 0, write: 0, sequence: 0n, tail: 0,
  };
  if (s.log.offset < MiB || s.log.offset % MiB) throw invalid();
  if (header.getUint16(H.logVersion, true) !== 0) throw invalid();
  if (isZeroGuid(headerGuid(currentHeader(s), H.logGuid)) || s.log.length === 0) return false;
  if (s.log.length % MiB) throw invalid();
  const sequence = await searchLog(s);
  if (!sequence) return false;
  if (readOnly) {
    throw new BlkioError('EPERM', `VHDX image file '${filename}' opened read-only, but contains a log that needs to be replayed`, [
      'To replay the log, run:', `qemu-img check -r all '${filename}'`,
    ]);
  }
  await replay(s, sequence.log, sequence.count);
  return true;
}

/**
 * Write `data` at `offset` of the file through the log: one entry of whole 4 KiB sectors (the
 * partial ones completed from the file), written after the last one, then replayed at once.
 */
export async function logWriteAndFlush(s: VhdxState, data: Uint8Array, offset: number): Promise<void> {
  await s.file.flush();
  await writeEntry(s, data, offset);
  const entry = { ...s.log };
  await s.file.flush();
  await replay(s, entry, 1);
  // The next entry goes after this one (QEMU keeps the replay's read position as the log's).
  s.log = entry;
}

async function writeEntry(s: VhdxState, data: Uint8Array, offset: number): Promise<void> {
  const header = currentHeader(s);
  if (data.length > view(header).getUint32(H.logLength, true)) throw invalid();
  if (!isZeroGuid(headerGuid(header, H.logGuid))) throw new BlkioError('ENOTSUP');
  await updateHeaders(s, false, newGuid());
  if (s.log.sequence === 0n) s.log.sequence = 1n;
  const firstSector = Math.floor(offset / LOG_SECTOR) * LOG_SECTOR;
  const sectors = Math.ceil((offset + data.length) / LOG_SECTOR) - firstSector / LOG_SECTOR;
  const descSectors = descriptorSectors(sectors);
  const entryLength = (descSectors + sectors) * LOG_SECTOR;
  const entry = new Uint8Array(entryLength);
  const ev = view(entry);
  const fileLength = BigInt(s.file.getLength());
  ev.setUint32(E.signature, ENTRY_SIGNATURE, true);
  ev.setUint32(E.entryLength, entryLength, true);
  ev.setUint32(E.tail, s.log.tail, true);
  ev.setBigUint64(E.sequence, s.log.sequence, true);
  ev.setUint32(E.descriptorCount, sectors, true);
  entry.set(headerGuid(currentHeader(s), H.logGuid), E.logGuid);
  ev.setBigUint64(E.flushedFileOffset, fileLength, true);
  ev.setBigUint64(E.lastFileOffset, fileLength, true);
  // The sectors as they are to be: the file's bytes with the new ones laid over them.
  const merged = new Uint8Array(sectors * LOG_SECTOR);
  await s.file.read(firstSector, merged.length, merged);
  merged.set(data, offset - firstSector);
  for (let i = 0; i < sectors; i++) {
    const raw = merged.subarray(i * LOG_SECTOR, (i + 1) * LOG_SECTOR);
    const d = entry.subarray(ENTRY_HEADER_BYTES + i * DESC_BYTES);
    const dv = view(d);
    dv.setUint32(D.signature, DESC_SIGNATURE, true);
    d.set(raw.subarray(LOG_SECTOR - 4), D.trailingBytes);
    d.set(raw.subarray(0, 8), D.leadingBytes);
    dv.setBigUint64(D.fileOffset, BigInt(firstSector + i * LOG_SECTOR), true);
    dv.setBigUint64(D.sequence, s.log.sequence, true);
    const at = (descSectors + i) * LOG_SECTOR;
    ev.setUint32(at, DATA_SIGNATURE, true);
    ev.setUint32(at + 4, Number(s.log.sequence >> 32n) >>> 0, true);
    entry.set(raw.subarray(8, LOG_SECTOR - 4), at + 8);
    ev.setUint32(at + LOG_SECTOR - 4, Number(s.log.sequence & 0xffffffffn), true);
  }
  setChecksum(entry, E.checksum);
  await userVisibleWrite(s);
  let written = 0;
  for (; written < descSectors + sectors; written++) {
    const at = s.log.write;
    const next = nextIndex(at, s.log.length);
    if (next === s.log.read) break;
    await s.file.write(s.log.offset + at, LOG_SECTOR, entry.subarray(written * LOG_SECTOR, (written + 1) * LOG_SECTOR));
    s.log.write = next;
  }
  if (written !== descSectors + sectors) throw invalid();
  s.log.sequence++;
  s.log.tail = s.log.write;
}
