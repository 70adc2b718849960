/** `write` and `writev`: synchronous writes of a pattern, a file's bytes or zeroes. */
import { PERM_WRITE } from '../../block/permissions.js';
import { REQ_FUA, REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQUEST_MAX_BYTES } from '../../block/flags.js';
import {
  checkSectorAligned, parseNum, parseNumExact, parseRequestOptions, parseVectorRequest, type RequestOptions,
} from './args.js';
import { allocBuffer, bufferFromFile, releaseBuffer } from './buffers.js';
import { formatReport } from './format.js';
import type { GetoptSpec } from './getopt.js';
import { timedRequest, usage, type IoCommand, type IoSession } from './session.js';

/** Fill byte of write buffers without -P. */
export const WRITE_FILL = 0xcd;

/** The options of write, writev and aio_write (each command accepts its own subset). */
export interface WriteOptions extends RequestOptions {
  compressed: boolean;
  zeroes: boolean;
  /** REQ_FUA, REQ_NO_FALLBACK, REQ_MAY_UNMAP as asked for. */
  flags: number;
  sourceFile?: string;
}

/** The write commands' options and operands, or the status the command ends with. */
export function parseWriteOptions(
  session: IoSession, command: IoCommand, argv: string[], short: GetoptSpec['short'],
): { options: WriteOptions; operands: string[] } | number {
  const options: WriteOptions = { vmstate: false, compressed: false, csv: false, quiet: false, zeroes: false, flags: 0 };
  return parseRequestOptions(session, command, argv, short, 'write', options, (item) => {
    switch (item.key) {
      case 'c': options.compressed = true; break;
      case 'f': options.flags |= REQ_FUA; break;
      case 'n': options.flags |= REQ_NO_FALLBACK; break;
      case 's': options.sourceFile = item.value; break;
      case 'u': options.flags |= REQ_MAY_UNMAP; break;
      case 'z': options.zeroes = true; break;
      // 'p' is accepted and ignored.
    }
    return true;
  });
}

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
    const parsed = parseWriteOptions(session, writeCommand, argv, 'bcCfnpP:qs:uz');
    if (typeof parsed === 'number') return parsed;
    const { options: { vmstate, compressed, csv, quiet, zeroes, flags, pattern, sourceFile }, operands } = parsed;
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
    const exactOffset = parseNumExact(session, operands[0]);
    if (exactOffset === undefined) return -1;
    const offset = Number(exactOffset);
    const count = parseNum(session, operands[1]);
    if (count === undefined) return -1;
    if (count > REQUEST_MAX_BYTES && !(flags & REQ_NO_FALLBACK)) {
      session.print(`length cannot exceed ${REQUEST_MAX_BYTES} without -n, given ${operands[1]}`);
      return -1;
    }
    if ((vmstate || compressed) && !checkSectorAligned(session, exactOffset, count)) return -1;

    let buf: Uint8Array | undefined;
    if (!zeroes) {
      buf = sourceFile !== undefined
        ? bufferFromFile(session, sourceFile, count)
        : allocBuffer(session, count, pattern ?? WRITE_FILL);
      if (!buf) return -1;
    }
    const blk = session.blk;
    const elapsed = await timedRequest(session, 'write', async () => {
      if (vmstate) {
        await blk.saveVmState(exactOffset, count, buf!);
        // blk_save_vmstate flushes in writethrough mode, where other writes carry FUA.
        if (session.writeFlags & REQ_FUA) await blk.flush();
      } else if (zeroes) await blk.writeZeroes(offset, count, flags | session.writeFlags);
      else if (compressed) await blk.writeCompressed(offset, count, buf!);
      else await blk.write(offset, count, buf!, flags | session.writeFlags);
    });
    if (elapsed === undefined) return -1;
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
    const parsed = parseWriteOptions(session, writevCommand, argv, 'CfqP:');
    if (typeof parsed === 'number') return parsed;
    const { csv, quiet, flags, pattern = WRITE_FILL } = parsed.options;
    const request = parseVectorRequest(session, writevCommand, parsed.operands);
    if (typeof request === 'number') return request;
    const { offset, count } = request;
    const buf = allocBuffer(session, count, pattern);
    const elapsed = await timedRequest(session, 'writev', () => session.blk.write(offset, count, buf, flags | session.writeFlags));
    if (elapsed === undefined) return -1;
    if (!quiet) session.write(formatReport({ op: 'wrote', offset, count, total: count, elapsed, csv }));
    return 0;
  },
};
