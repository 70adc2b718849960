/**
 * `alloc` and `map`: what the image's top layer itself holds (bdrv_is_allocated: data and
 * zero clusters count, the backing chain does not). `map` merges neighbouring runs with the
 * same answer into one line.
 */
import { toBlkioError } from '../../errors.js';
import { isAllocated } from '../../block/io.js';
import type { BlockNode } from '../../block/node.js';
import { cvtstr } from '../../options/size.js';
import { parseNum } from './args.js';
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
    let count = 512;
    if (argv.length === 3) {
      const parsed = parseNum(session, argv[2]);
      if (parsed === undefined) return -1;
      count = parsed;
    }
    const node = session.node;
    let offset = start;
    let remaining = count;
    let allocated = 0;
    while (remaining > 0) {
      let r: { allocated: boolean; pnum: number };
      try {
        r = await isAllocated(node, offset, remaining);
      } catch (e) {
        session.print(`is_allocated failed: ${toBlkioError(e).strerror}`);
        return -1;
      }
      if (r.pnum === 0) {
        // End of the image: only what lies before it was asked about.
        count -= remaining;
        break;
      }
      offset += r.pnum;
      remaining -= r.pnum;
      if (r.allocated) allocated += r.pnum;
    }
    session.print(`${allocated}/${count} bytes allocated at offset ${cvtstr(start)}`);
    return 0;
  },
};

/** One run of equal allocation status from `offset`, merging as many answers as agree. */
async function allocationRun(node: BlockNode, offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }> {
  const first = await isAllocated(node, offset, bytes);
  let pnum = first.pnum;
  while (pnum > 0 && pnum < bytes) {
    // A failure after the first answer only ends the run; the next run reports it.
    const next = await isAllocated(node, offset + pnum, bytes - pnum).catch(() => undefined);
    if (!next || next.allocated !== first.allocated || next.pnum === 0) break;
    pnum += next.pnum;
  }
  return { allocated: first.allocated, pnum };
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
    while (bytes > 0) {
      let run: { allocated: boolean; pnum: number };
      try {
        run = await allocationRun(node, offset, bytes);
      } catch (e) {
        session.errorReport(`Failed to get allocation status: ${toBlkioError(e).strerror}`);
        return -1;
      }
      if (run.pnum === 0) {
        session.errorReport('Unexpected end of image');
        return -1;
      }
      const status = run.allocated ? '    allocated' : 'not allocated';
      session.print(`${cvtstr(run.pnum)} (0x${run.pnum.toString(16)}) bytes ${status} at offset ${cvtstr(offset)} (0x${offset.toString(16)})`);
      offset += run.pnum;
      bytes -= run.pnum;
    }
    return 0;
  },
};
