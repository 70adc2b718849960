/**
 * `reopen [-r|-w] [-c cache] [-o options]`: change the open image's read-only mode and cache
 * mode. Other options can only be "changed" to the value they already have.
 */
import { BlkioError } from '../../errors.js';
import { ROLE_COW } from '../../block/driver.js';
import type { BlockNode } from '../../block/node.js';
import { PERM_RESIZE, PERM_WRITE, PERM_WRITE_UNCHANGED, refreshPermissions } from '../../block/permissions.js';
import { isCacheMode } from '../../cli/open-image.js';
import { parseBool, qemuOptsValue } from '../../options/qemuopts.js';
import type { FlatOptions, OptionScalar } from '../../options/types.js';
import { getopt } from './getopt.js';
import { parseOptionString } from './open.js';
import { badOption, usage, type IoCommand, type IoSession } from './session.js';

/** Cache modes that flush after every write (the rest leave that to flush requests). */
const WRITETHROUGH_MODES = ['writethrough', 'directsync'];
const CACHE_OPTIONS = ['cache.direct', 'cache.no-flush'];

/** The node and everything it reads and writes through, except backing files (they stay read-only). */
function subtree(node: BlockNode): BlockNode[] {
  const nodes = [node];
  for (const edge of node.children) if (!(edge.role & ROLE_COW)) nodes.push(...subtree(edge.node));
  return nodes;
}

/** Make the root and what it reads and writes through read-only or writable. */
async function setReadOnly(root: BlockNode, readOnly: boolean): Promise<void> {
  if (readOnly && root.cumulativePerms().perm & (PERM_WRITE | PERM_WRITE_UNCHANGED)) {
    throw new BlkioError('EPERM', `Read-only block node '${root.nodeName}' cannot support read-write users`);
  }
  const nodes = subtree(root).filter((n) => n.readOnly !== readOnly);
  for (const n of nodes) n.readOnly = readOnly;
  try {
    refreshPermissions(new Map(), [root]);
  } catch (e) {
    for (const n of nodes) n.readOnly = !readOnly;
    throw e;
  }
  // Bottom-up: a node gains write access only after the storage it writes to.
  for (const n of nodes.reverse()) await n.driver.reopen?.(n);
}

/** Options every node takes that a reopen may change. */
const CHANGEABLE_BOOLS = ['auto-read-only', 'cache.direct', 'cache.no-flush'];
const DISCARD_MODES: Record<string, boolean> = { off: false, ignore: false, on: true, unmap: true };
const DETECT_ZEROES = ['off', 'on', 'unmap'];

/**
 * Check (and apply, for the few generic options that may change) one reopen option of `node`;
 * `child.key` options go to that child. Anything else must keep the value it has.
 */
function applyOption(node: BlockNode, key: string, value: OptionScalar): void {
  const dot = key.indexOf('.');
  const child = dot > 0 ? node.child(key.slice(0, dot)) : undefined;
  if (child) return applyOption(child.node, key.slice(dot + 1), value);
  const text = qemuOptsValue(value);
  if (CHANGEABLE_BOOLS.includes(key)) {
    parseBool(key, value);
  } else if (key === 'discard') {
    if (text === undefined || !Object.hasOwn(DISCARD_MODES, text)) throw new BlkioError('EINVAL', 'Invalid discard option');
    node.discardUnmap = DISCARD_MODES[text];
  } else if (key === 'detect-zeroes') {
    if (text === undefined || !DETECT_ZEROES.includes(text)) throw new BlkioError('EINVAL', `invalid parameter value: ${text}`);
    node.detectZeroes = text as BlockNode['detectZeroes'];
  } else if (qemuOptsValue(node.openOptions[key] ?? null) !== text) {
    throw new BlkioError('EINVAL', `Cannot change the option '${key}'`);
  }
}

/** Apply the options of a reopen request to the image. */
async function applyReopen(session: IoSession, options: FlatOptions, writethrough: boolean): Promise<void> {
  const node = session.node;
  let readOnly = node.readOnly;
  for (const [key, value] of Object.entries(options)) {
    if (key === 'read-only') readOnly = parseBool(key, value);
    else applyOption(node, key, value);
  }
  if (readOnly !== node.readOnly) await setReadOnly(session.blk.node, readOnly);
  session.image!.writethrough = writethrough;
}

export const reopenCommand: IoCommand = {
  name: 'reopen',
  argmin: 0,
  argmax: -1,
  args: '[(-r|-w)] [-c cache] [-o options]',
  oneline: 'reopens an image with new options',
  help: `
 Changes the open options of an already opened image

 Example:
 'reopen -o lazy-refcounts=on' - activates lazy refcount writeback on a qcow2 image

 -r, -- Reopen the image read-only
 -w, -- Reopen the image read-write
 -c, -- Change the cache mode to the given value
 -o, -- Changes block driver options (cf. 'open' command)

`,
  async run(session, argv) {
    let writable = !session.node.readOnly;
    let writethrough = session.image!.writethrough;
    let hasRw = false;
    let hasCache = false;
    const options: FlatOptions = {};
    const { items, operands } = getopt(argv, { short: 'c:o:rw' });
    for (const item of items) {
      if (item.kind === 'error') return badOption(session, reopenCommand, item.message);
      switch (item.key) {
        case 'c':
          if (!isCacheMode(item.value)) {
            session.errorReport(`Invalid cache option: ${item.value}`);
            return -1;
          }
          writethrough = WRITETHROUGH_MODES.includes(item.value);
          hasCache = true;
          break;
        case 'o':
          if (!parseOptionString(session, item.value, options, 'reject')) return -1;
          break;
        default:
          if (hasRw) {
            session.errorReport('Only one -r/-w option may be given');
            return -1;
          }
          writable = item.key === 'w';
          hasRw = true;
      }
    }
    if (operands.length !== 0) return usage(session, reopenCommand);
    const blk = session.blk;
    if (!writable) {
      await session.drain();
      blk.setPerms(blk.root.perm & ~(PERM_WRITE | PERM_RESIZE), blk.root.shared);
    }
    if (options['read-only'] !== undefined) {
      if (hasRw) {
        session.errorReport("Cannot set both -r/-w and 'read-only'");
        return -1;
      }
    } else {
      options['read-only'] = writable ? 'off' : 'on';
    }
    if (CACHE_OPTIONS.some((key) => options[key] !== undefined) && hasCache) {
      session.errorReport('Cannot set both -c and the cache options');
      return -1;
    }
    try {
      await applyReopen(session, options, writethrough);
      return 0;
    } catch (e) {
      session.reportError(e);
      return -1;
    }
  },
};
