/** `read` and `readv`: synchronous reads with pattern verification, hexdump and statistics. */
import {
  checkSectorAligned, parseNum, parseRange, parseRequestOptions, parseVectorRequest, type RequestOptions,
} from './args.js';
import { allocBuffer, matchesPattern, releaseBuffer } from './buffers.js';
import { formatReport, hexdump } from './format.js';
import type { GetoptSpec } from './getopt.js';
import { timedRequest, usage, type IoCommand, type IoSession } from './session.js';

/** Fill byte of read buffers: data the request did not write shows up as 0xab. */
export const READ_FILL = 0xab;

/** What a finished read prints: verification, then (unless -q) the dump and the report. */
export interface ReadOutcome {
  buf: Uint8Array;
  offset: number;
  elapsed: bigint;
  csv: boolean;
  quiet: boolean;
  dump: boolean;
  /** Verify buf[verifyOffset, verifyOffset + verifyCount) against this byte. */
  pattern?: number;
  verifyOffset: number;
  verifyCount: number;
}

/** Prints the outcome of a read; false when the pattern did not match. */
export function finishRead(session: IoSession, r: ReadOutcome): boolean {
  let ok = true;
  if (r.pattern !== undefined && !matchesPattern(r.buf.subarray(r.verifyOffset, r.verifyOffset + r.verifyCount), r.pattern)) {
    session.print(`Pattern verification failed at offset ${r.offset + r.verifyOffset}, ${r.verifyCount} bytes`);
    ok = false;
  }
  if (r.quiet) return ok;
  if (r.dump) session.write(hexdump(r.buf, r.offset));
  session.write(formatReport({
    op: 'read', offset: r.offset, count: r.buf.length, total: r.buf.length, elapsed: r.elapsed, csv: r.csv,
  }));
  return ok;
}

/**
 * readv and aio_read: `count` bytes at `offset` into one fresh buffer, verified as a whole and
 * reported; a failure prints `readv failed: <error>` (both print that in qemu-io). Resolves to
 * whether the read matched, undefined when it failed.
 */
export async function readVector(
  session: IoSession, offset: number, count: number, report: Pick<ReadOutcome, 'csv' | 'quiet' | 'dump' | 'pattern'>,
): Promise<boolean | undefined> {
  const buf = allocBuffer(session, count, READ_FILL);
  const elapsed = await timedRequest(session, 'readv', () => session.blk.read(offset, count, buf));
  if (elapsed === undefined) return undefined;
  return finishRead(session, { buf, offset, elapsed, ...report, verifyOffset: 0, verifyCount: count });
}

/** The options of read, readv and aio_read (each command accepts its own subset). */
export interface ReadOptions extends RequestOptions, Pick<ReadOutcome, 'dump'> {
  verifyOffset?: number;
  verifyCount?: number;
}

/** The read commands' options and operands, or the status the command ends with. */
export function parseReadOptions(
  session: IoSession, command: IoCommand, argv: string[], short: GetoptSpec['short'],
): { options: ReadOptions; operands: string[] } | number {
  const options: ReadOptions = { vmstate: false, csv: false, quiet: false, dump: false };
  return parseRequestOptions(session, command, argv, short, 'read', options, (item) => {
    switch (item.key) {
      case 'l':
        options.verifyCount = parseNum(session, item.value);
        return options.verifyCount !== undefined;
      case 's':
        options.verifyOffset = parseNum(session, item.value);
        return options.verifyOffset !== undefined;
      case 'v': options.dump = true; return true;
      // 'p' is accepted and ignored.
      default: return true;
    }
  });
}

/** readv and aio_read: their options and `off len [len..]`, or the status the command ends with. */
export function parseReadvArgs(
  session: IoSession, command: IoCommand, argv: string[], short: GetoptSpec['short'],
): { options: ReadOptions; offset: number; count: number } | number {
  const parsed = parseReadOptions(session, command, argv, short);
  if (typeof parsed === 'number') return parsed;
  const request = parseVectorRequest(session, command, parsed.operands);
  return typeof request === 'number' ? request : { options: parsed.options, ...request };
}

export const readCommand: IoCommand = {
  name: 'read',
  altname: 'r',
  argmin: 2,
  argmax: -1,
  args: '[-abCqv] [-P pattern [-s off] [-l len]] off len',
  oneline: 'reads a number of bytes at a specified offset',
  help: `
 reads a range of bytes from the given offset

 Example:
 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 -b, -- read from the VM state rather than the virtual disk
 -C, -- report statistics in a machine parsable format
 -l, -- length for pattern verification (only with -P)
 -p, -- ignored for backwards compatibility
 -P, -- use a pattern to verify read data
 -q, -- quiet mode, do not show I/O statistics
 -s, -- start offset for pattern verification (only with -P)
 -v, -- dump buffer to standard output

`,
  async run(session, argv) {
    const parsed = parseReadOptions(session, readCommand, argv, 'bCl:pP:qs:v');
    if (typeof parsed === 'number') return parsed;
    const { options: { vmstate, csv, quiet, dump, pattern, verifyOffset, verifyCount }, operands } = parsed;
    if (operands.length !== 2) return usage(session, readCommand);
    const range = parseRange(session, operands[0], operands[1]);
    if (!range) return -1;
    const { offset, exactOffset, count } = range;
    if (pattern === undefined && (verifyOffset !== undefined || verifyCount !== undefined)) {
      return usage(session, readCommand);
    }
    const vOffset = verifyOffset ?? 0;
    const vCount = verifyCount ?? count - vOffset;
    if (vCount < 0 || vCount + vOffset > count) {
      session.print('pattern verification range exceeds end of read data');
      return -1;
    }
    if (vmstate && !checkSectorAligned(session, exactOffset, count)) return -1;

    const buf = allocBuffer(session, count, READ_FILL);
    const elapsed = await timedRequest(session, 'read', () => (vmstate
      ? session.blk.loadVmState(exactOffset, count, buf)
      : session.blk.read(offset, count, buf)));
    if (elapsed === undefined) return -1;
    const ok = finishRead(session, {
      buf, offset, elapsed, csv, quiet, dump, pattern, verifyOffset: vOffset, verifyCount: vCount,
    });
    releaseBuffer(buf);
    return ok ? 0 : -1;
  },
};

export const readvCommand: IoCommand = {
  name: 'readv',
  argmin: 2,
  argmax: -1,
  args: '[-Cqv] [-P pattern] off len [len..]',
  oneline: 'reads a number of bytes at a specified offset',
  help: `
 reads a range of bytes from the given offset into multiple buffers

 Example:
 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 Uses multiple iovec buffers if more than one byte range is specified.
 -C, -- report statistics in a machine parsable format
 -P, -- use a pattern to verify read data
 -v, -- dump buffer to standard output
 -q, -- quiet mode, do not show I/O statistics

`,
  async run(session, argv) {
    const parsed = parseReadvArgs(session, readvCommand, argv, 'CP:qv');
    if (typeof parsed === 'number') return parsed;
    return (await readVector(session, parsed.offset, parsed.count, parsed.options)) ? 0 : -1;
  },
};
