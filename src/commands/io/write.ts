/** `write` and `writev`: synchronous writes of a pattern, a file's bytes or zeroes. */
import { errno, toBlkioError } from '../../errors.js';
import { PERM_WRITE } from '../../block/permissions.js';
import { REQ_FUA, REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQUEST_MAX_BYTES } from '../../block/flags.js';
import { checkSectorAligned, parseNum, parsePattern, parseVectorLength } from './args.js';
import { allocBuffer, bufferFromFile, releaseBuffer } from './buffers.js';
import { formatReport } from './format.js';
import { getopt } from './getopt.js';
import { badOption, usage, type IoCommand } from './session.js';

/** Fill byte of write buffers without -P. */
export const WRITE_FILL = 0xcd;

export const writeCommand: IoCommand = {
  name: 'write',
  altname: 'w',
  argmin: 2,
  argmax: -1,
  perm: PERM_WRITE,
  args: '[-bcCfnquz] [-P pattern | -s source_file] off len',
  oneline: 'writes a number of bytes at a specified offset',
  help: `
 writes a range of bytes from the given offset

 Example:
 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 -b, -- write to the VM state rather than the virtual disk
 -c, -- write compressed data with blk_write_compressed
 -f, -- use Force Unit Access semantics
 -n, -- with -z, don't allow slow fallback
 -p, -- ignored for backwards compatibility
 -P, -- use different pattern to fill file
 -s, -- use a pattern file to fill the write buffer
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics
 -u, -- with -z, allow unmapping
 -z, -- write zeroes using blk_co_pwrite_zeroes

`,
  async run(session, argv) {
    let vmstate = false;
    let compressed = false;
    let csv = false;
    let quiet = false;
    let zeroes = false;
    let flags = 0;
    let pattern: number | undefined;
    let sourceFile: string | undefined;
    const { items, operands } = getopt(argv, { short: 'bcCfnpP:qs:uz' });
    for (const item of items) {
      if (item.kind === 'error') return badOption(session, writeCommand, item.message);
      switch (item.key) {
        case 'b': vmstate = true; break;
        case 'c': compressed = true; break;
        case 'C': csv = true; break;
        case 'f': flags |= REQ_FUA; break;
        case 'n': flags |= REQ_NO_FALLBACK; break;
        case 'P':
          pattern = parsePattern(session, item.value);
          if (pattern === undefined) return -1;
          break;
        case 'q': quiet = true; break;
        case 's': sourceFile = item.value; break;
        case 'u': flags |= REQ_MAY_UNMAP; break;
        case 'z': zeroes = true; break;
        // 'p' is accepted and ignored.
      }
    }
    if (operands.length !== 2) return usage(session, writeCommand);
    if (vmstate && zeroes) {
      session.print('-b and -z cannot be specified at the same time');
      return -1;
    }
    if (flags & REQ_FUA && (vmstate || compressed)) {
      session.print('-f and -b or -c cannot be specified at the same time');
      return -1;
    }
    if (flags & REQ_NO_FALLBACK && !zeroes) {
      session.print('-n requires -z to be specified');
      return -1;
    }
    if (flags & REQ_MAY_UNMAP && !zeroes) {
      session.print('-u requires -z to be specified');
      return -1;
    }
    if (Number(zeroes) + Number(pattern !== undefined) + Number(sourceFile !== undefined) > 1) {
      session.print('Only one of -z, -P, and -s can be specified at the same time');
      return -1;
    }
    const offset = parseNum(session, operands[0]);
    if (offset === undefined) return -1;
    const count = parseNum(session, operands[1]);
    if (count === undefined) return -1;
    if (count > REQUEST_MAX_BYTES && !(flags & REQ_NO_FALLBACK)) {
      session.print(`length cannot exceed ${REQUEST_MAX_BYTES} without -n, given ${operands[1]}`);
      return -1;
    }
    if ((vmstate || compressed) && !checkSectorAligned(session, offset, count)) return -1;

    let buf: Uint8Array | undefined;
    if (!zeroes) {
      buf = sourceFile !== undefined
        ? bufferFromFile(session, sourceFile, count)
        : allocBuffer(session, count, pattern ?? WRITE_FILL);
      if (!buf) return -1;
    }
    const blk = session.blk;
    const start = process.hrtime.bigint();
    try {
      // No blkio driver keeps VM state (in QEMU only qcow2 does).
      if (vmstate) throw errno('ENOTSUP');
      if (zeroes) await blk.writeZeroes(offset, count, flags | session.writeFlags);
      else if (compressed) await blk.writeCompressed(offset, count, buf!);
      else await blk.write(offset, count, buf!, flags | session.writeFlags);
    } catch (e) {
      session.print(`write failed: ${toBlkioError(e).strerror}`);
      return -1;
    }
    const elapsed = process.hrtime.bigint() - start;
    if (buf) releaseBuffer(buf);
    if (!quiet) session.write(formatReport({ op: 'wrote', offset, count, total: count, elapsed, csv }));
    return 0;
  },
};

export const writevCommand: IoCommand = {
  name: 'writev',
  argmin: 2,
  argmax: -1,
  perm: PERM_WRITE,
  args: '[-Cfq] [-P pattern] off len [len..]',
  oneline: 'writes a number of bytes at a specified offset',
  help: `
 writes a range of bytes from the given offset source from multiple buffers

 Example:
 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file

 Writes into a segment of the currently open file, using a buffer
 filled with a set pattern (0xcdcdcdcd).
 -P, -- use different pattern to fill file
 -C, -- report statistics in a machine parsable format
 -f, -- use Force Unit Access semantics
 -q, -- quiet mode, do not show I/O statistics

`,
  async run(session, argv) {
    let csv = false;
    let quiet = false;
    let flags = 0;
    let pattern = WRITE_FILL;
    const { items, operands } = getopt(argv, { short: 'CfqP:' });
    for (const item of items) {
      if (item.kind === 'error') return badOption(session, writevCommand, item.message);
      switch (item.key) {
        case 'C': csv = true; break;
        case 'f': flags |= REQ_FUA; break;
        case 'q': quiet = true; break;
        case 'P': {
          const parsed = parsePattern(session, item.value);
          if (parsed === undefined) return -1;
          pattern = parsed;
          break;
        }
      }
    }
    if (operands.length < 2) return usage(session, writevCommand);
    const offset = parseNum(session, operands[0]);
    if (offset === undefined) return -1;
    const count = parseVectorLength(session, operands.slice(1));
    if (count === undefined) return -1;
    const buf = allocBuffer(session, count, pattern);
    const start = process.hrtime.bigint();
    try {
      await session.blk.write(offset, count, buf, flags | session.writeFlags);
    } catch (e) {
      session.print(`writev failed: ${toBlkioError(e).strerror}`);
      return -1;
    }
    const elapsed = process.hrtime.bigint() - start;
    if (!quiet) session.write(formatReport({ op: 'wrote', offset, count, total: count, elapsed, csv }));
    return 0;
  },
};
