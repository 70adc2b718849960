/**
 * `blkio img compare [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] file1 file2`
 *
 * Walks both images' whole-chain block status side by side: ranges zero in both are equal
 * without reading; ranges allocated in both are read and compared (at most 2 MiB at a time);
 * a range allocated on one side only must read as zeroes there. Strict mode (-s) also demands
 * equal sizes and equal block status. Exit: 0 identical, 1 different, 2 open or usage
 * problem, 3 block status failure, 4 read failure.
 */
import { BlkioError, toBlkioError } from '../../errors.js';
import type { BlockBackend } from '../../block/backend.js';
import { STATUS_ALLOCATED, STATUS_DATA, STATUS_EOF, STATUS_OFFSET_VALID, STATUS_ZERO } from '../../block/flags.js';
import { blockStatusAbove } from '../../block/io.js';
import { isCacheMode } from '../../cli/open-image.js';
import { floatPercent, Progress } from '../../cli/progress.js';
import {
  ExitStatus, UsageError, openImg, reportError, runSubcommand, withLayer, writeOut,
} from './common.js';
import { FORCE_SHARE_OPTION, IMAGE_OPTS_OPTION, parseImgArgs } from './options.js';

const IO_BUF_SIZE = 2 * 1024 * 1024;
const SECTOR = 512;
/** The block status bits QEMU 7.2 reports (strict mode compares exactly these). */
const STATUS_MASK = STATUS_DATA | STATUS_ZERO | STATUS_OFFSET_VALID | STATUS_ALLOCATED | STATUS_EOF;

interface Side {
  blk: BlockBackend;
  filename: string;
  size: number;
}

/** Start of the first 512-byte sector (or trailing partial sector) holding a non-zero byte, or -1. */
export function findNonZero(buf: Uint8Array): number {
  const zeros = Buffer.alloc(Math.min(buf.length, 65536));
  for (let pos = 0; pos < buf.length; pos += zeros.length) {
    const n = Math.min(zeros.length, buf.length - pos);
    const piece = Buffer.from(buf.buffer, buf.byteOffset + pos, n);
    if (!piece.equals(zeros.subarray(0, n))) {
      for (let i = 0; i < n; i++) if (piece[i] !== 0) return (pos + i) - ((pos + i) % SECTOR);
    }
  }
  return -1;
}

/**
 * QEMU's compare_buffers: whether the first 512-byte sector differs, and how many bytes from the
 * start share that same-or-different state (whole sectors).
 */
export function compareSectors(a: Uint8Array, b: Uint8Array): { differs: boolean; pnum: number } {
  const same = (start: number, end: number): boolean => Buffer.from(a.buffer, a.byteOffset + start, end - start)
    .equals(Buffer.from(b.buffer, b.byteOffset + start, end - start));
  const first = Math.min(a.length, SECTOR);
  const differs = !same(0, first);
  if (!differs && same(0, a.length)) return { differs, pnum: a.length };
  let i = first;
  while (i < a.length) {
    const end = Math.min(a.length, i + SECTOR);
    if (!same(i, end) !== differs) break;
    i = end;
  }
  return { differs, pnum: i };
}

export function imgCompare(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    let format1: string | undefined;
    let format2: string | undefined;
    let cache = 'writeback';
    let showProgress = false;
    let strict = false;
    const { imageOpts, forceShare, quiet, operands, objects } = parseImgArgs('compare', argv, {
      short: ':hf:F:T:pqsU',
      long: [IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION],
      objectFailureStatus: 2,
      own: (item) => {
        switch (item.key) {
          case 'f': format1 = item.value; return true;
          case 'F': format2 = item.value; return true;
          case 'T': cache = item.value; return true;
          case 'p': showProgress = true; return true;
          case 's': strict = true; return true;
          default: return false;
        }
      },
    });
    if (operands.length !== 2) throw new UsageError('Expecting two image file names');
    const progress = new Progress(showProgress && !quiet ? 'human' : 'off', { minSkip: 2 });
    const say = (text: string): void => {
      if (!quiet) writeOut(text);
    };
    return withLayer(objects, async (layer) => {
      try {
        if (!isCacheMode(cache)) throw failure(2, `Invalid source cache option: ${cache}`);
        const open = async (filename: string, format: string | undefined): Promise<Side> => {
          try {
            return { blk: await openImg(layer, { filename, format, imageOpts, readOnly: true, forceShare, cache }), filename, size: 0 };
          } catch (e) {
            reportError(e);
            throw new ExitStatus(2);
          }
        };
        // Both images open before either is sized.
        const sized = (side: Side): Side => {
          try {
            return { ...side, size: side.blk.getLength() };
          } catch (e) {
            throw failure(4, `Can't get size of ${side.filename}: ${toBlkioError(e).strerror}`);
          }
        };
        const opened1 = await open(operands[0], format1);
        const opened2 = await open(operands[1], format2);
        const side1 = sized(opened1);
        const side2 = sized(opened2);
        const status = await compareImages(side1, side2, strict, progress, say);
        if (status === 0) say('Images are identical.\n');
        return status;
      } finally {
        progress.dispose();
      }
    });
  });
}

function failure(status: number, message: string): ExitStatus {
  reportError(new BlkioError('EIO', message));
  return new ExitStatus(status);
}

async function blockStatus(side: Side, offset: number): Promise<{ status: number; pnum: number }> {
  try {
    const r = await blockStatusAbove(side.blk.node, undefined, offset, side.size - offset);
    return { status: r.status & STATUS_MASK, pnum: r.pnum };
  } catch {
    throw failure(3, `Sector allocation test failed for ${side.filename}`);
  }
}

async function read(side: Side, offset: number, buf: Uint8Array): Promise<void> {
  try {
    await side.blk.read(offset, buf.length, buf);
  } catch (e) {
    const err = e instanceof BlkioError ? e.strerror : String(e);
    throw failure(4, `Error while reading offset ${offset} of ${side.filename}: ${err}`);
  }
}

/** The part only one side has must read as zeroes; returns 1 (after saying so) when it does not. */
async function checkEmpty(side: Side, offset: number, buf: Uint8Array, say: (t: string) => void): Promise<number> {
  await read(side, offset, buf);
  const idx = findNonZero(buf);
  if (idx < 0) return 0;
  say(`Content mismatch at offset ${offset + idx}!\n`);
  return 1;
}

async function compareImages(a: Side, b: Side, strict: boolean, progress: Progress, say: (t: string) => void): Promise<number> {
  const common = Math.min(a.size, b.size);
  const total = Math.max(a.size, b.size);
  const buf1 = new Uint8Array(IO_BUF_SIZE);
  const buf2 = new Uint8Array(IO_BUF_SIZE);
  progress.update(0, total);
  if (strict && a.size !== b.size) {
    say('Strict mode: Image size mismatch!\n');
    return 1;
  }
  let offset = 0;
  while (offset < common) {
    const s1 = await blockStatus(a, offset);
    const s2 = await blockStatus(b, offset);
    let chunk = Math.min(s1.pnum, s2.pnum);
    if (strict && s1.status !== s2.status) {
      say(`Strict mode: Offset ${offset} block status mismatch!\n`);
      return 1;
    }
    const allocated1 = (s1.status & STATUS_ALLOCATED) !== 0;
    const allocated2 = (s2.status & STATUS_ALLOCATED) !== 0;
    if (s1.status & s2.status & STATUS_ZERO) {
      // Both read as zeroes.
    } else if (allocated1 === allocated2) {
      if (allocated1) {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        const x = buf1.subarray(0, chunk);
        const y = buf2.subarray(0, chunk);
        await read(a, offset, x);
        await read(b, offset, y);
        const { differs, pnum } = compareSectors(x, y);
        if (differs || pnum !== chunk) {
          say(`Content mismatch at offset ${offset + (differs ? 0 : pnum)}!\n`);
          return 1;
        }
      }
    } else {
      chunk = Math.min(chunk, IO_BUF_SIZE);
      if (await checkEmpty(allocated1 ? a : b, offset, buf1.subarray(0, chunk), say)) return 1;
    }
    offset += chunk;
    progress.advance(floatPercent(chunk, total));
  }
  if (a.size !== b.size) {
    say('Warning: Image size mismatch!\n');
    const over = a.size > b.size ? a : b;
    while (offset < total) {
      const s = await blockStatus(over, offset);
      let chunk = s.pnum;
      if (s.status & STATUS_ALLOCATED && !(s.status & STATUS_ZERO)) {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        if (await checkEmpty(over, offset, buf1.subarray(0, chunk), say)) return 1;
      }
      offset += chunk;
      progress.advance(floatPercent(chunk, total));
    }
  }
  return 0;
}
