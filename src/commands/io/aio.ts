/**
 * `aio_read`, `aio_write`, `aio_flush`: requests that run while later commands go on. The
 * command succeeds once the request is submitted; its report (or failure) is printed when it
 * completes, and neither a failure nor a pattern mismatch makes qemu-io fail.
 */
import { toBlkioError } from '../../errors.js';
import { PERM_WRITE } from '../../block/permissions.js';
import { REQ_MAY_UNMAP } from '../../block/flags.js';
import { parseNum, parseVectorLength } from './args.js';
import { allocBuffer } from './buffers.js';
import { formatReport } from './format.js';
import { parseReadvArgs, readVector } from './read.js';
import { parseWriteOptions, WRITE_FILL } from './write.js';
import { usage, type IoCommand } from './session.js';

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
    const parsed = parseReadvArgs(session, aioReadCommand, argv, 'CP:iqv');
    if (typeof parsed === 'number') return parsed;
    // Neither a failure nor a mismatch makes aio_read fail: only the report tells.
    session.startAio(async (out) => {
      const matched = await readVector(out, parsed.offset, parsed.count, parsed.options);
      return matched === undefined ? 'failed' : 'read';
    });
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
    const parsed = parseWriteOptions(session, aioWriteCommand, argv, 'CfiqP:uz');
    if (typeof parsed === 'number') return parsed;
    const { options: { csv, quiet, zeroes, pattern = WRITE_FILL }, operands } = parsed;
    let flags = parsed.options.flags;
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
      const length = parseNum(session, operands[1]);
      if (length === undefined) return -1;
      count = length;
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
    session.startAio((out) => request.then(
      () => {
        const elapsed = process.hrtime.bigint() - start;
        if (!quiet) out.write(formatReport({ op: 'wrote', offset, count, total: count, elapsed, csv }));
        return 'write';
      },
      (e) => {
        out.print(`aio_write failed: ${toBlkioError(e).strerror}`);
        return 'failed';
      },
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
