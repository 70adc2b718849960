/**
 * `aio_read`, `aio_write`, `aio_flush`: requests that run while later commands go on. The
 * command succeeds once the request is submitted; its report (or failure) is printed when it
 * completes, and neither a failure nor a pattern mismatch makes qemu-io fail.
 */
import { toBlkioError } from '../../errors.js';
import { PERM_WRITE } from '../../block/permissions.js';
import { REQ_FUA, REQ_MAY_UNMAP } from '../../block/flags.js';
import { parseNum, parsePattern, parseVectorLength } from './args.js';
import { allocBuffer } from './buffers.js';
import { formatReport } from './format.js';
import { getopt } from './getopt.js';
import { readVector } from './read.js';
import { WRITE_FILL } from './write.js';
import { badOption, usage, type IoCommand } from './session.js';

export const aioReadCommand: IoCommand = {
  name: 'aio_read',
  argmin: 2,
  argmax: -1,
  args: '[-Ciqv] [-P pattern] off len [len..]',
  oneline: 'asynchronously reads a number of bytes',
  help: `
 asynchronously reads a range of bytes from the given offset

 Example:
 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file

 Reads a segment of the currently open file, optionally dumping it to the
 standard output stream (with -v option) for subsequent inspection.
 The read is performed asynchronously and the aio_flush command must be
 used to ensure all outstanding aio requests have been completed.
 Note that due to its asynchronous nature, this command will be
 considered successful once the request is submitted, independently
 of potential I/O errors or pattern mismatches.
 -C, -- report statistics in a machine parsable format
 -P, -- use a pattern to verify read data
 -i, -- treat request as invalid, for exercising stats
 -v, -- dump buffer to standard output
 -q, -- quiet mode, do not show I/O statistics

`,
  async run(session, argv) {
    let csv = false;
    let quiet = false;
    let dump = false;
    let pattern: number | undefined;
    const { items, operands } = getopt(argv, { short: 'CP:iqv' });
    for (const item of items) {
      if (item.kind === 'error') return badOption(session, aioReadCommand, item.message);
      switch (item.key) {
        case 'C': csv = true; break;
        case 'P':
          pattern = parsePattern(session, item.value);
          if (pattern === undefined) return -1;
          break;
        case 'i':
          // Only accounted as an invalid request in QEMU's statistics; nothing is submitted.
          session.print('injecting invalid read request');
          return 0;
        case 'q': quiet = true; break;
        case 'v': dump = true; break;
      }
    }
    if (operands.length < 2) return usage(session, aioReadCommand);
    const offset = parseNum(session, operands[0]);
    if (offset === undefined) return -1;
    const count = parseVectorLength(session, operands.slice(1));
    if (count === undefined) return -1;
    // Neither a failure nor a mismatch makes aio_read fail: only the report tells.
    session.track(readVector(session, offset, count, { csv, quiet, dump, pattern }));
    return 0;
  },
};

export const aioWriteCommand: IoCommand = {
  name: 'aio_write',
  argmin: 2,
  argmax: -1,
  perm: PERM_WRITE,
  args: '[-Cfiquz] [-P pattern] off len [len..]',
  oneline: 'asynchronously writes a number of bytes',
  help: `
 asynchronously writes a range of bytes from the given offset source
 from multiple buffers

 Example:
 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 The write is performed asynchronously and the aio_flush command must be
 used to ensure all outstanding aio requests have been completed.
 Note that due to its asynchronous nature, this command will be
 considered successful once the request is submitted, independently
 of potential I/O errors or pattern mismatches.
 -P, -- use different pattern to fill file
 -C, -- report statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -i, -- treat request as invalid, for exercising stats
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes using blk_aio_pwrite_zeroes

`,
  async run(session, argv) {
    let csv = false;
    let quiet = false;
    let zeroes = false;
    let flags = 0;
    let pattern = WRITE_FILL;
    const { items, operands } = getopt(argv, { short: 'CfiqP:uz' });
    for (const item of items) {
      if (item.kind === 'error') return badOption(session, aioWriteCommand, item.message);
      switch (item.key) {
        case 'C': csv = true; break;
        case 'f': flags |= REQ_FUA; break;
        case 'i':
          session.print('injecting invalid write request');
          return 0;
        case 'q': quiet = true; break;
        case 'P': {
          const parsed = parsePattern(session, item.value);
          if (parsed === undefined) return -1;
          pattern = parsed;
          break;
        }
        case 'u': flags |= REQ_MAY_UNMAP; break;
        case 'z': zeroes = true; break;
      }
    }
    if (operands.length < 2) return usage(session, aioWriteCommand);
    if (zeroes && operands.length !== 2) {
      session.print('-z supports only a single length parameter');
      return -1;
    }
    if (flags & REQ_MAY_UNMAP && !zeroes) {
      session.print('-u requires -z to be specified');
      return -1;
    }
    // qemu-io 7.2 never records -P for aio_write, so `-z -P` is not refused: the zeroes win.
    const offset = parseNum(session, operands[0]);
    if (offset === undefined) return -1;
    const blk = session.blk;
    flags |= session.writeFlags;
    let count: number;
    let request: Promise<void>;
    let start: bigint;
    if (zeroes) {
      const parsed = parseNum(session, operands[1]);
      if (parsed === undefined) return -1;
      count = parsed;
      // qemu-io 7.2 never takes the start time of a zero write: its report counts from boot.
      start = 0n;
      request = blk.writeZeroes(offset, count, flags);
    } else {
      const total = parseVectorLength(session, operands.slice(1));
      if (total === undefined) return -1;
      count = total;
      const buf = allocBuffer(session, count, pattern);
      start = process.hrtime.bigint();
      request = blk.write(offset, count, buf, flags);
    }
    session.track(request.then(
      () => {
        const elapsed = process.hrtime.bigint() - start;
        if (!quiet) session.write(formatReport({ op: 'wrote', offset, count, total: count, elapsed, csv }));
      },
      (e) => session.print(`aio_write failed: ${toBlkioError(e).strerror}`),
    ));
    return 0;
  },
};

export const aioFlushCommand: IoCommand = {
  name: 'aio_flush',
  argmin: 0,
  argmax: 0,
  oneline: 'completes all outstanding aio requests',
  async run(session) {
    await session.drain();
    return 0;
  },
};
