/**
 * `alloc` and `map`: what the image's top layer itself holds (bdrv_is_allocated: data and
 * zero clusters count, the backing chain does not). `map` merges neighbouring runs with the
 * same answer into one line.
 */
import { toBlkioError } from '../../errors.js';
import { StatusList } from '../../block/driver.js';
import { STATUS_ALLOCATED } from '../../block/flags.js';
import { isAllocated, nodeBlockStatusListNow } from '../../block/io.js';
import type { BlockNode } from '../../block/node.js';
import { cvtstr } from '../../options/size.js';
import { parseNum, parseNumExact } from './args.js';
import type { IoCommand } from './session.js';

export const allocCommand: IoCommand = {
  name: 'alloc',
  altname: 'a',
  argmin: 1,
  argmax: 2,
  args: 'offset [count]',
  oneline: 'checks if offset is allocated in the file',
  async run(session, argv) {
    const start = parseNum(session, argv[1]);
    if (start === undefined) return -1;
    // Printed as given (exact beyond 2^53) unless the image ends first.
    let count: bigint | number = 512n;
    if (argv.length === 3) {
      const parsed = parseNumExact(session, argv[2]);
      if (parsed === undefined) return -1;
      count = parsed;
    }
    let walked = 0;
    let allocated = 0;
    try {
      await new AllocationReader(session.node).walk(start, Number(count), (isAllocatedHere, pnum) => {
        if (pnum === 0) {
          // End of the image: only what lies before it was asked about.
          count = walked;
          return false;
        }
        walked += pnum;
        if (isAllocatedHere) allocated += pnum;
        return true;
      });
    } catch (e) {
      session.print(`is_allocated failed: ${toBlkioError(e).strerror}`);
      return -1;
    }
    session.print(`${allocated}/${count} bytes allocated at offset ${cvtstr(start)}`);
    return 0;
  },
};

/** Characters of map output written at once. */
const OUTPUT_BATCH = 64 * 1024;

/** Answers per block-status call. */
const STATUS_LIST_CAPACITY = 1024;

/**
 * isAllocated's answers, read many at a time while the metadata is cached (one at a time,
 * waiting for it, otherwise): a map of a large image walks hundreds of thousands. A walk that
 * stops resumes from the answers already read when the next one starts where it stopped.
 */
class AllocationReader {
  private readonly list = new StatusList(STATUS_LIST_CAPACITY);
  /** The next unused answer in the list, where it starts, and the end of the range the list answers. */
  private index = 0;
  private offset = -1;
  private end = -1;

  constructor(private readonly node: BlockNode) {}

  /**
   * The answers from `offset` on, one after another, each given to `take` (false: stop, the
   * answer stays unused) until `bytes` are answered or an answer reaches the end of the image
   * (pnum 0). Errors propagate.
   */
  async walk(offset: number, bytes: number, take: (allocated: boolean, pnum: number) => boolean): Promise<void> {
    // Counted down, not compared with an end: beyond 2^53 offset + bytes may round to offset.
    let remaining = bytes;
    const list = this.list;
    while (remaining > 0) {
      const end = offset + remaining;
      if (offset !== this.offset || end !== this.end || this.index === list.count) {
        this.offset = -1;
        nodeBlockStatusListNow(this.node, offset, remaining, list);
        if (list.count === 0) {
          const r = await isAllocated(this.node, offset, remaining);
          if (!take(r.allocated, r.pnum) || r.pnum === 0) return;
          offset += r.pnum;
          remaining -= r.pnum;
          continue;
        }
        this.index = 0;
        this.end = end;
      }
      const pnum = list.pnum[this.index];
      this.offset = offset;
      if (!take((list.status[this.index] & STATUS_ALLOCATED) !== 0, pnum)) return;
      this.index++;
      this.offset += pnum;
      if (pnum === 0) return;
      offset += pnum;
      remaining -= pnum;
    }
  }
}

/** One run of equal allocation status from `offset`, merging as many answers as agree. */
async function allocationRun(reader: AllocationReader, offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }> {
  let run: { allocated: boolean; pnum: number } | undefined;
  try {
    await reader.walk(offset, bytes, (allocated, pnum) => {
      if (!run) {
        run = { allocated, pnum };
        return true;
      }
      if (allocated !== run.allocated || pnum === 0) return false;
      run.pnum += pnum;
      return true;
    });
  } catch (e) {
    // A failure after the first answer only ends the run; the next run reports it.
    if (!run) throw e;
  }
  return run!;
}

export const mapCommand: IoCommand = {
  name: 'map',
  argmin: 0,
  argmax: 0,
  args: '',
  oneline: 'prints the allocated areas of a file',
  async run(session) {
    const node = session.node;
    let offset = 0;
    let bytes: number;
    try {
      bytes = session.blk.getLength();
    } catch (e) {
      session.errorReport(`Failed to query image length: ${toBlkioError(e).strerror}`);
      return -1;
    }
    const reader = new AllocationReader(node);
    // Lines go out a batch at a time (one write each would cost more than the walk), and
    // before an error message, which comes after them.
    let lines = '';
    const flush = (): void => {
      session.write(lines);
      lines = '';
    };
    while (bytes > 0) {
      let run: { allocated: boolean; pnum: number };
      try {
        run = await allocationRun(reader, offset, bytes);
      } catch (e) {
        flush();
        session.errorReport(`Failed to get allocation status: ${toBlkioError(e).strerror}`);
        return -1;
      }
      if (run.pnum === 0) {
        flush();
        session.errorReport('Unexpected end of image');
        return -1;
      }
      const status = run.allocated ? '    allocated' : 'not allocated';
      lines += `${cvtstr(run.pnum)} (0x${run.pnum.toString(16)}) bytes ${status} at offset ${cvtstr(offset)} (0x${offset.toString(16)})\n`;
      if (lines.length >= OUTPUT_BATCH) flush();
      offset += run.pnum;
      bytes -= run.pnum;
    }
    flush();
    return 0;
  },
};
