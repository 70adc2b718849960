/**
 * `reopen [-r|-w] [-c cache] [-o options]`: change the open image's read-only mode and cache
 * mode. Other options can only be "changed" to the value they already have.
 */
import { BlkioError } from '../../errors.js';
import { ROLE_COW } from '../../block/driver.js';
import type { BlockNode } from '../../block/node.js';
import { PERM_RESIZE, PERM_WRITE, refreshPermissions } from '../../block/permissions.js';
import { isCacheMode, isDirectCacheMode } from '../../cli/open-image.js';
import { inheritLimits, parseDriverOptions } from '../../block/graph.js';
import { qdictKeyOrder } from '../../options/json.js';
import { parseBool, qemuOptsValue } from '../../options/qemuopts.js';
import type { FlatOptions } from '../../options/types.js';
import { getopt } from './getopt.js';
import { parseOptionString } from './open.js';
import { badOption, usage, type IoCommand, type IoSession } from './session.js';

/** Cache modes that flush after every write (the rest leave that to flush requests). */
const WRITETHROUGH_MODES = ['writethrough', 'directsync'];
const CACHE_OPTIONS = ['cache.direct', 'cache.no-flush'];

/**
 * Each node's read-only state after a reopen of `top` (QEMU's reopen queue): its own
 * `read-only` option (given now, or given before: a reopen keeps explicit options), else
 * read-only for a backing file and the parent's state for other children. `explicit` holds
 * the options given now, `top`'s among them.
 */
function readOnlyTargets(top: BlockNode, explicit: Map<BlockNode, boolean>): Map<BlockNode, boolean> {
  const targets = new Map<BlockNode, boolean>();
  const keptOption = (node: BlockNode): boolean | undefined => {
    const kept = qemuOptsValue(node.openOptions['read-only'] ?? null);
    return kept === undefined ? undefined : parseBool('read-only', kept);
  };
  const visit = (node: BlockNode, inherited: boolean): void => {
    if (targets.has(node)) return;
    const target = explicit.get(node) ?? keptOption(node) ?? inherited;
    targets.set(node, target);
    for (const edge of node.children) visit(edge.node, edge.role & ROLE_COW ? true : target);
  };
  visit(top, explicit.get(top)!);
  return targets;
}

/** Give each node of `targets` its read-only state, the permissions checked with the new states. */
async function setReadOnly(root: BlockNode, targets: Map<BlockNode, boolean>): Promise<void> {
  const changing = [...targets.keys()].filter((n) => n.readOnly !== targets.get(n));
  const toReadOnly = changing.filter((n) => targets.get(n));
  const toWritable = changing.filter((n) => !targets.get(n));
  /** Reopen the drivers of `order` in turn, each after `before` (if given); `done` collects the nodes reopened. */
  const reopenDrivers = async (order: BlockNode[], done: BlockNode[] = [], before?: (n: BlockNode) => void) => {
    for (const n of order) {
      before?.(n);
      await n.driver.reopen?.(n);
      done.push(n);
    }
  };
  const madeReadOnly: BlockNode[] = [];
  try {
    // Top-down when giving up write access: a node writes out what it caches (a preallocate
    // filter cuts its file back) while the nodes below still take writes.
    await reopenDrivers(toReadOnly, madeReadOnly, (n) => (n.readOnly = true));
    for (const n of toWritable) n.readOnly = false;
    refreshPermissions(new Map(), [root], new Set(toReadOnly));
  } catch (e) {
    // Every node back to its old state (a driver may have failed before some were set), and
    // the drivers that were reopened reopened again.
    for (const n of changing) n.readOnly = !targets.get(n);
    await reopenDrivers(madeReadOnly.reverse());
    throw e;
  }
  // Bottom-up when gaining it: a node writes only after the storage it writes to can. A node
  // that cannot (its file is gone) leaves all of them read-only, as they were.
  const reopened: BlockNode[] = [];
  try {
    await reopenDrivers([...toWritable].reverse(), reopened);
  } catch (e) {
    for (const n of toWritable) n.readOnly = true;
    await reopenDrivers(reopened.reverse()).catch(() => {});
    refreshPermissions(new Map(), [root]);
    throw e;
  }
}

/** Options every node takes that a reopen may change (the root's read-only is taken before). */
const CHANGEABLE_BOOLS = ['read-only', 'auto-read-only', 'cache.direct', 'cache.no-flush'];
const DISCARD_MODES: Record<string, boolean> = { off: false, ignore: false, on: true, unmap: true };
const DETECT_ZEROES = ['off', 'on', 'unmap'];
/** Children an option of the same name may refer to by node name. */
const CHILD_REFERENCES = ['file', 'backing'];

/** What a reopen request applies once every node's options were found acceptable. */
type Commit = () => void | Promise<void>;

/** The reopen options of each node: `child.key` options go to that child as `key`. */
function optionsByNode(root: BlockNode, options: FlatOptions): Map<BlockNode, FlatOptions> {
  const byNode = new Map<BlockNode, FlatOptions>([[root, {}]]);
  for (const [key, value] of Object.entries(options)) {
    let node = root;
    let local = key;
    for (let dot = local.indexOf('.'); dot > 0; dot = local.indexOf('.')) {
      const child = node.child(local.slice(0, dot));
      if (!child) break;
      node = child.node;
      local = local.slice(dot + 1);
    }
    if (!byNode.has(node)) byNode.set(node, {});
    byNode.get(node)![local] = value;
  }
  return byNode;
}

/** Every node a reopen of `root` visits, parents before children (QEMU's reopen queue). */
function reopenQueue(root: BlockNode, queue: BlockNode[] = []): BlockNode[] {
  if (queue.includes(root)) return queue;
  queue.push(root);
  for (const edge of root.children) reopenQueue(edge.node, queue);
  return queue;
}

/**
 * Check one node's reopen options in QEMU's order (the generic ones, whether the node may
 * change, the driver's, child references, then whatever is left must keep its value) and
 * queue what applies them; returns the node's own `read-only` option. `toReadOnlyWithCor`:
 * the node is to become read-only under -C.
 */
function prepareNode(node: BlockNode, options: FlatOptions, commits: Commit[], toReadOnlyWithCor: boolean): boolean | undefined {
  let readOnly: boolean | undefined;
  const rest: FlatOptions = {};
  for (const key of qdictKeyOrder(Object.keys(options))) {
    const value = options[key];
    const text = qemuOptsValue(value);
    if (CHANGEABLE_BOOLS.includes(key)) {
      const on = parseBool(key, value);
      if (key === 'read-only') readOnly = on;
      if (key === 'cache.direct' && node.driver.setCacheDirect) commits.push(() => node.driver.setCacheDirect!(node, on));
    } else if (key === 'discard') {
      if (text === undefined || !Object.hasOwn(DISCARD_MODES, text)) throw new BlkioError('EINVAL', 'Invalid discard option');
      commits.push(() => void (node.discardUnmap = DISCARD_MODES[text]));
    } else if (key === 'detect-zeroes') {
      if (text === undefined || !DETECT_ZEROES.includes(text)) throw new BlkioError('EINVAL', `invalid parameter value: ${text}`);
      commits.push(() => void (node.detectZeroes = text as BlockNode['detectZeroes']));
    } else {
      rest[key] = value;
    }
  }
  if (toReadOnlyWithCor) throw new BlkioError('EINVAL', `Can't set node '${node.nodeName}' to r/o with copy-on-read enabled`);
  const driver = node.driver;
  if (driver.cannotReopen) {
    throw new BlkioError('ENOTSUP', `Block format '${driver.name}' used by node '${node.nodeName}' does not support reopening files`);
  }
  const driverKeys = Object.keys(rest).filter((key) => Object.hasOwn(driver.options, key));
  if (driver.prepareReopen && driverKeys.length > 0) {
    const given: FlatOptions = {};
    for (const key of driverKeys) {
      given[key] = rest[key];
      delete rest[key];
    }
    // Options not given keep the values the node was opened (or last reopened) with.
    const kept = Object.fromEntries(Object.entries(node.openOptions).filter(([key]) => Object.hasOwn(driver.options, key)));
    const merged = driver.joinOptions ? driver.joinOptions(given, kept) : { ...kept, ...given };
    const apply = driver.prepareReopen(node, parseDriverOptions(driver, { ...merged }));
    commits.push(async () => {
      await apply();
      for (const key of Object.keys(kept)) delete node.openOptions[key];
      Object.assign(node.openOptions, merged);
    });
  }
  for (const role of CHILD_REFERENCES) {
    const value = rest[role];
    if (typeof value !== 'string') continue;
    const target = node.layer.findNodeOrThrow(value);
    if (target === node) {
      throw new BlkioError('EINVAL', `Making '${node.nodeName}' a ${role} child of '${node.nodeName}' would create a cycle`);
    }
    if (node.child(role)?.node !== target) {
      throw new BlkioError('ENOTSUP', `Replacing the ${role} child of '${node.nodeName}' in a reopen is not supported`);
    }
    delete rest[role];
  }
  for (const key of qdictKeyOrder(Object.keys(rest))) {
    const current = key === 'node-name' ? (node.autoNamed ? null : node.nodeName) : node.openOptions[key] ?? null;
    if (qemuOptsValue(current) !== qemuOptsValue(rest[key])) {
      throw new BlkioError('EINVAL', `Cannot change the option '${key}'`);
    }
  }
  return readOnly;
}

/** Apply the options of a reopen request to the image. */
async function applyReopen(session: IoSession, options: FlatOptions, writethrough: boolean): Promise<void> {
  const node = session.node;
  let readOnly = node.readOnly;
  const rest = { ...options };
  if (rest['read-only'] !== undefined) readOnly = parseBool('read-only', rest['read-only']);
  delete rest['read-only'];
  const commits: Commit[] = [];
  const byNode = optionsByNode(node, rest);
  const queue = reopenQueue(node);
  // Children inherit the cache mode unless given their own.
  const direct = byNode.get(node)!['cache.direct'];
  if (direct !== undefined) for (const n of queue) if (!byNode.get(n)?.['cache.direct']) byNode.set(n, { ...byNode.get(n), 'cache.direct': direct });
  // -C is an implicit copy-on-read filter above the node here, a flag on it in QEMU.
  let corAbove = false;
  for (let n = session.blk.node; n !== node; n = n.filteredChild!.node) corAbove ||= n.driver.name === 'copy-on-read';
  const givenReadOnly = new Map<BlockNode, boolean>();
  for (const target of queue) {
    const own = prepareNode(target, byNode.get(target) ?? {}, commits, target === node && corAbove && readOnly);
    if (own !== undefined) givenReadOnly.set(target, own);
  }
  // The node (and an implicit copy-on-read node above it) takes the state asked for.
  const explicitReadOnly = new Map(givenReadOnly);
  for (let n = session.blk.node; ; n = n.filteredChild!.node) {
    explicitReadOnly.set(n, readOnly);
    if (n === node) break;
  }
  await setReadOnly(session.blk.node, readOnlyTargets(session.blk.node, explicitReadOnly));
  for (const [n, own] of givenReadOnly) n.openOptions['read-only'] = own ? 'on' : 'off';
  for (const commit of commits) await commit();
  for (const n of [...queue].reverse()) inheritLimits(n);
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
    let cacheDirect = false;
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
          cacheDirect = isDirectCacheMode(item.value);
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
    // A reopen waits for the requests in flight, as bdrv_reopen drains the node.
    await session.drain();
    if (!writable) {
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
    if (hasCache) options['cache.direct'] = cacheDirect ? 'on' : 'off';
    try {
      await applyReopen(session, options, writethrough);
      return 0;
    } catch (e) {
      session.reportError(e);
      return -1;
    }
  },
};
