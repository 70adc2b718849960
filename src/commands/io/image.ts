/** Commands about the image as a whole: `flush`, `truncate`, `length`, `info`, `discard`. */
import { errno, toBlkioError } from '../../errors.js';
import { MAX_NODE_LENGTH } from '../../block/io.js';
import { PERM_RESIZE, PERM_WRITE } from '../../block/permissions.js';
import type { BlockNode } from '../../block/node.js';
import type { DriverInfo } from '../../block/driver.js';
import { cvtstr } from '../../options/size.js';
import { dumpQObjectLines } from '../img/qjson.js';
import { parseNumExact, parseRange } from './args.js';
import { formatReport } from './format.js';
import { getopt } from './getopt.js';
import { badOption, timedRequest, usage, type IoCommand } from './session.js';

export const flushCommand: IoCommand = {
  name: 'flush',
  altname: 'f',
  argmin: 0,
  argmax: 0,
  oneline: 'flush all in-core file state to disk',
  async run(session) {
    try {
      await session.blk.flush();
      return 0;
    } catch {
      return -1;
    }
  },
};

const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'];

export const truncateCommand: IoCommand = {
  name: 'truncate',
  altname: 't',
  argmin: 1,
  argmax: 3,
  perm: PERM_WRITE | PERM_RESIZE,
  args: '[-m prealloc_mode] off',
  oneline: 'truncates the current file at the given offset',
  async run(session, argv) {
    let prealloc = 'off';
    const { items, operands } = getopt(argv, { short: 'm:' });
    for (const item of items) {
      if (item.kind === 'error') return badOption(session, truncateCommand, item.message);
      if (!PREALLOC_MODES.includes(item.value)) {
        session.errorReport(`Invalid preallocation mode '${item.value}'`);
        return -1;
      }
      prealloc = item.value;
    }
    // qemu-io reads the size past the options but names argv[1] when it does not parse;
    // without a size operand it crashes, blkio prints the usage instead.
    if (operands.length === 0) return usage(session, truncateCommand);
    const size = parseNumExact(session, operands[0], argv[1]);
    if (size === undefined) return -1;
    // Checked here because only the exact value can be named (beyond 2^53 numbers round).
    if (size > MAX_NODE_LENGTH) {
      session.errorReport(`offset(${size}) exceeds maximum(${BigInt(MAX_NODE_LENGTH)})`);
      return -1;
    }
    try {
      // Not exact, as qemu-io: a node that cannot shrink (NBD, host devices) may keep its size.
      await session.blk.truncate(Number(size), false, prealloc);
      return 0;
    } catch (e) {
      session.reportError(e);
      return -1;
    }
  },
};

export const lengthCommand: IoCommand = {
  name: 'length',
  altname: 'l',
  argmin: 0,
  argmax: 0,
  oneline: 'gets the length of the current file',
  async run(session) {
    try {
      session.print(cvtstr(session.blk.getLength()));
      return 0;
    } catch (e) {
      session.print(`getlength: ${toBlkioError(e).strerror}`);
      return -1;
    }
  },
};

/** bdrv_get_info: the node's own answer, or its filtered child's for filters; ENOTSUP otherwise. */
function driverInfo(node: BlockNode): DriverInfo {
  for (let n: BlockNode | undefined = node; n; n = n.filteredChild?.node) {
    if (n.driver.getInfo) return n.driver.getInfo(n);
  }
  throw errno('ENOTSUP');
}

export const infoCommand: IoCommand = {
  name: 'info',
  altname: 'i',
  argmin: 0,
  argmax: 0,
  oneline: 'prints information about the current file',
  async run(session) {
    const node = session.node;
    // QEMU prints the format name and then the protocol name: both for protocol drivers.
    session.print(`format name: ${node.driver.name}`);
    if (node.driver.kind === 'protocol') session.print(`format name: ${node.driver.protocolName ?? node.driver.name}`);
    let info: DriverInfo;
    try {
      info = driverInfo(node);
    } catch {
      return -1;
    }
    session.print(`cluster size: ${cvtstr(info.clusterSize ?? 0)}`);
    session.print(`vm state offset: ${cvtstr(info.vmStateOffset ?? 0)}`);
    let specific;
    try {
      specific = await node.driver.formatSpecific?.(node);
    } catch (e) {
      session.reportError(e);
      return -1;
    }
    if (specific) {
      session.print('Format specific information:');
      for (const line of dumpQObjectLines(specific.json, 1)) session.print(line);
    }
    return 0;
  },
};

export const discardCommand: IoCommand = {
  name: 'discard',
  altname: 'd',
  argmin: 2,
  argmax: -1,
  perm: PERM_WRITE,
  args: '[-Cq] off len',
  oneline: 'discards a number of bytes at a specified offset',
  help: `
 discards a range of bytes from the given offset

 Example:
 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file

 Discards a segment of the currently open file.
 -C, -- report statistics in a machine parsable format
 -q, -- quiet mode, do not show I/O statistics

`,
  async run(session, argv) {
    let csv = false;
    let quiet = false;
    const { items, operands } = getopt(argv, { short: 'Cq' });
    for (const item of items) {
      if (item.kind === 'error') return badOption(session, discardCommand, item.message);
      if (item.key === 'C') csv = true;
      else quiet = true;
    }
    if (operands.length !== 2) return usage(session, discardCommand);
    const range = parseRange(session, operands[0], operands[1]);
    if (!range) return -1;
    const { offset, count } = range;
    const elapsed = await timedRequest(session, 'discard', () => session.blk.discard(offset, count));
    if (elapsed === undefined) return -1;
    if (!quiet) session.write(formatReport({ op: 'discard', offset, count, total: count, elapsed, csv }));
    return 0;
  },
};
