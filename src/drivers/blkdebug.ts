/**
 * `blkdebug`: a pass-through filter that injects errors. Rules name a debug event (fired by
 * the generic layer, e.g. `cor_write`, or by a format driver on its file, e.g. `l2_load`,
 * `read_aio`); when the event fires, its `inject-error` rules become the active set, and
 * requests of a matching I/O type touching the rule's sector fail with the rule's errno.
 * `set-state` rules move a small state machine that rules can be conditioned on. The rules
 * for `none` apply from the start. Breakpoints (qemu-io `break`) suspend the request that
 * fires an event until `resume`. Alignment options set the node's request limits.
 *
 * Filename syntax: `blkdebug:<config file>:<image>`; any other filename is the image.
 */
import { readFile } from 'node:fs/promises';
import { hostPath } from '../byte-strings.js';
import { BlkioError, errno, errnoError, errnoFromNumber, toBlkioError } from '../errors.js';
import type { BdrvChild } from '../block/child.js';
import { ROLE_FILTER_CHILD, type BlockDriver } from '../block/driver.js';
import type { BlockNode } from '../block/node.js';
import { REQ_FUA, REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQ_WRITE_UNCHANGED, STATUS_RAW } from '../block/flags.js';
import { supportedWriteFlags, supportedZeroFlags } from '../block/io.js';
import { defaultChildPerms, permFromQapiName } from '../block/permissions.js';
import type { FlatOptions } from '../options/types.js';
import { unflattenOptions } from '../options/json.js';
import { parseConfigFile, sectionsFromOptions, type Section } from './blkdebug-config.js';

/** QEMU 7.2's BlkdebugEvent names. */
export const BLKDEBUG_EVENTS: ReadonlySet<string> = new Set([
  'l1_update', 'l1_grow_alloc_table', 'l1_grow_write_table', 'l1_grow_activate_table', 'l2_load', 'l2_update',
  'l2_update_compressed', 'l2_alloc_cow_read', 'l2_alloc_write', 'read_aio', 'read_backing_aio', 'read_compressed',
  'write_aio', 'write_compressed', 'vmstate_load', 'vmstate_save', 'cow_read', 'cow_write', 'reftable_load',
  'reftable_grow', 'reftable_update', 'refblock_load', 'refblock_update', 'refblock_update_part', 'refblock_alloc',
  'refblock_alloc_hookup', 'refblock_alloc_write', 'refblock_alloc_write_blocks', 'refblock_alloc_write_table',
  'refblock_alloc_switch_table', 'cluster_alloc', 'cluster_alloc_bytes', 'cluster_free', 'flush_to_os',
  'flush_to_disk', 'pwritev_rmw_head', 'pwritev_rmw_after_head', 'pwritev_rmw_tail', 'pwritev_rmw_after_tail',
  'pwritev', 'pwritev_zero', 'pwritev_done', 'empty_image_prepare', 'l1_shrink_write_table',
  'l1_shrink_free_l2_clusters', 'cor_write', 'cluster_alloc_space', 'none',
]);

const IO_TYPES = ['read', 'write', 'write-zeroes', 'discard', 'flush', 'block-status'] as const;
type IoType = (typeof IO_TYPES)[number];
/** Rules without `iotype` match every request but block-status queries. */
const DEFAULT_IO_MASK = IO_TYPES.filter((t) => t !== 'block-status');

type Rule =
  | { action: 'inject'; event: string; state: number; errno: number; offset: number | undefined; once: boolean; immediately: boolean; iotypes: readonly IoType[] }
  | { action: 'set-state'; event: string; state: number; newState: number }
  | { action: 'suspend'; event: string; state: number; tag: string };

type InjectRule = Extract<Rule, { action: 'inject' }>;

interface BlkdebugState {
  image: BdrvChild;
  /** Every rule in the order it was defined. */
  rules: Rule[];
  /** inject-error rules armed by the last event that had any, first-defined first. */
  active: InjectRule[];
  state: number;
  /** Requests held at a breakpoint, by tag, with the function that lets each go. */
  suspended: Array<{ tag: string; resume: () => void }>;
  limits: { align: number; maxTransfer: number; optWriteZero: number; maxWriteZero: number; optDiscard: number; maxDiscard: number };
  takePerms: number;
  unsharePerms: number;
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** QemuOpts numbers are uint64; the C fields holding them are signed. */
function asSigned(n: number): number {
  return n >= 2 ** 63 ? n - 2 ** 64 : n;
}

function ruleFromSection(section: Section): Rule {
  const v = section.values;
  const event = v.get('event') as string | undefined;
  if (event === undefined) throw invalid('Missing event name for rule');
  if (!BLKDEBUG_EVENTS.has(event)) throw invalid(`invalid parameter value: ${event}`);
  const state = asSigned((v.get('state') as number | undefined) ?? 0);
  if (section.group === 'set-state') {
    return { action: 'set-state', event, state, newState: asSigned((v.get('new_state') as number | undefined) ?? 0) };
  }
  const sector = asSigned((v.get('sector') as number | undefined) ?? -1);
  const iotype = v.get('iotype') as string | undefined;
  if (iotype !== undefined && !(IO_TYPES as readonly string[]).includes(iotype)) throw invalid(`invalid parameter value: ${iotype}`);
  return {
    action: 'inject',
    event,
    state,
    errno: asSigned((v.get('errno') as number | undefined) ?? 5),
    offset: sector === -1 ? undefined : sector * 512,
    once: (v.get('once') as boolean | undefined) ?? false,
    immediately: (v.get('immediately') as boolean | undefined) ?? false,
    iotypes: iotype === undefined ? DEFAULT_IO_MASK : [iotype as IoType],
  };
}

async function readConfig(path: string): Promise<string> {
  try {
    return await readFile(hostPath(path), 'utf8');
  } catch (e) {
    const err = toBlkioError(e);
    if (err.code === 'EISDIR') throw errnoError('Cannot read config file', err);
    throw errnoError('Could not read blkdebug config file', err);
  }
}

/** `take-child-perms` / `unshare-child-perms`: a list of permission names (`N` keys). */
function permissionList(options: FlatOptions, name: string): number {
  if (Object.keys(options).length === 0) return 0;
  const list = unflattenOptions(Object.fromEntries(Object.entries(options).map(([k, v]) => [`${name}.${k}`, v])))[name];
  if (!Array.isArray(list)) throw invalid(`Invalid parameter type for '${name}', expected: array`);
  let perms = 0;
  for (const item of list) {
    const perm = typeof item === 'string' ? permFromQapiName(item) : undefined;
    if (perm === undefined) throw invalid(`Parameter 'null' does not accept value '${String(item)}'`);
    perms |= perm;
  }
  return perms;
}

/** Each limit must be below 2^31 and a multiple of the alignment it builds on. */
function checkLimits(l: BlkdebugState['limits']): void {
  const check = (name: string, value: number, multipleOf: number, powerOfTwo = false) => {
    const ok = value < 2 ** 31 - 1 && (powerOfTwo ? (value & (value - 1)) === 0 : value % Math.max(multipleOf, 1) === 0);
    if (value && !ok) throw invalid(`Cannot meet constraints with ${name} ${value}`);
  };
  check('align', l.align, 1, true);
  check('max-transfer', l.maxTransfer, l.align);
  check('opt-write-zero', l.optWriteZero, l.align);
  check('max-write-zero', l.maxWriteZero, Math.max(l.optWriteZero, l.align));
  check('opt-discard', l.optDiscard, l.align);
  check('max-discard', l.maxDiscard, Math.max(l.optDiscard, l.align));
}

/** Process the rules of `event`: arm its inject rules, move the state, hit breakpoints. */
function fireEvent(node: BlockNode<BlkdebugState>, event: string): Promise<void> | void {
  const s = node.state;
  let newState = s.state;
  let armed: InjectRule[] | undefined;
  const held: Array<Promise<void>> = [];
  // Latest-defined first, as QEMU keeps them: the first-defined set-state has the last word.
  for (const rule of [...s.rules].reverse()) {
    if (rule.event !== event || (rule.state && rule.state !== s.state)) continue;
    if (rule.action === 'inject') (armed ??= []).unshift(rule);
    else if (rule.action === 'set-state') newState = rule.newState;
    else held.push(suspend(node, rule));
  }
  if (armed) s.active = armed;
  s.state = newState;
  if (held.length > 0) return Promise.all(held).then(() => {});
}

/** Hold the current request at a breakpoint (which is used up) until it is resumed. */
function suspend(node: BlockNode<BlkdebugState>, rule: Extract<Rule, { action: 'suspend' }>): Promise<void> {
  const s = node.state;
  s.rules.splice(s.rules.indexOf(rule), 1);
  node.layer.print(`blkdebug: Suspended request '${rule.tag}'`);
  return new Promise<void>((resume) => s.suspended.push({ tag: rule.tag, resume }));
}

/** Let go the first (or every) request held under `tag`; whether there was one. */
function resumeTag(node: BlockNode<BlkdebugState>, tag: string, all: boolean): boolean {
  const s = node.state;
  let found = false;
  for (let i = 0; i < s.suspended.length;) {
    if (s.suspended[i].tag !== tag) {
      i++;
      continue;
    }
    const [req] = s.suspended.splice(i, 1);
    node.layer.print(`blkdebug: Resuming request '${tag}'`);
    req.resume();
    found = true;
    if (!all) break;
  }
  return found;
}

/** Fail the request if an armed rule matches it; a rule with `once` is used up. */
async function checkRules(node: BlockNode<BlkdebugState>, offset: number | undefined, bytes: number, type: IoType): Promise<void> {
  const s = node.state;
  const rule = s.active.find((r) =>
    (r.offset === undefined || (offset !== undefined && bytes > 0 && r.offset >= offset && r.offset < offset + bytes)) &&
    r.iotypes.includes(type));
  if (!rule || rule.errno === 0) return;
  if (rule.once) {
    s.active.splice(s.active.indexOf(rule), 1);
    s.rules.splice(s.rules.indexOf(rule), 1);
  }
  if (rule.errno < 0) return; // QEMU returns the negated value, which reads as success
  // Errors normally complete asynchronously, as a real failing request would.
  if (!rule.immediately) await new Promise((r) => setTimeout(r, 0));
  throw errnoFromNumber(rule.errno);
}

export const blkdebugDriver: BlockDriver<BlkdebugState> = {
  name: 'blkdebug',
  kind: 'protocol',
  isFilter: true,
  protocolPrefix: 'blkdebug',
  options: {
    config: { type: 'string' },
    'x-image': { type: 'string' },
    align: { type: 'size', default: 0 },
    'max-transfer': { type: 'size', default: 0 },
    'opt-write-zero': { type: 'size', default: 0 },
    'max-write-zero': { type: 'size', default: 0 },
    'opt-discard': { type: 'size', default: 0 },
    'max-discard': { type: 'size', default: 0 },
  },

  parseFilename(filename, options) {
    if (!filename.startsWith('blkdebug:')) {
      options['x-image'] = filename;
      return;
    }
    const rest = filename.slice('blkdebug:'.length);
    const colon = rest.indexOf(':');
    if (colon < 0) throw invalid('blkdebug requires both config file and image path');
    if (colon > 0) options.config = rest.slice(0, colon);
    options['x-image'] = rest.slice(colon + 1);
  },

  async open(node, ctx) {
    const config = ctx.opts.config as string | undefined;
    const sections = config === undefined ? [] : parseConfigFile(await readConfig(config));
    sections.push(...sectionsFromOptions('inject-error', ctx.takeOptions('inject-error')));
    sections.push(...sectionsFromOptions('set-state', ctx.takeOptions('set-state')));
    // All inject-error rules come before all set-state rules, whatever the order given.
    const rules = [...sections.filter((x) => x.group === 'inject-error'), ...sections.filter((x) => x.group === 'set-state')]
      .map(ruleFromSection);
    const takePerms = permissionList(ctx.takeOptions('take-child-perms'), 'take-child-perms');
    const unsharePerms = permissionList(ctx.takeOptions('unshare-child-perms'), 'unshare-child-perms');
    const limits = {
      align: ctx.opts.align as number,
      maxTransfer: ctx.opts['max-transfer'] as number,
      optWriteZero: ctx.opts['opt-write-zero'] as number,
      maxWriteZero: ctx.opts['max-write-zero'] as number,
      optDiscard: ctx.opts['opt-discard'] as number,
      maxDiscard: ctx.opts['max-discard'] as number,
    };
    node.state = { image: undefined!, rules, active: [], state: 1, suspended: [], limits, takePerms, unsharePerms };
    node.state.image = (await ctx.openChild('image', ROLE_FILTER_CHILD, { filename: ctx.opts['x-image'] as string | undefined }))!;
    // QEMU checks the limits only once the image is open, so the image's errors come first.
    checkLimits(limits);
    await fireEvent(node, 'none');
    return node.state;
  },

  async close(node) {
    for (const req of node.state.suspended.splice(0)) req.resume();
  },

  refreshLimits(node) {
    const l = node.state.limits;
    if (l.align) node.limits.requestAlignment = l.align;
    if (l.maxTransfer) node.limits.maxTransfer = l.maxTransfer;
    if (l.optWriteZero) node.limits.zeroAlignment = l.optWriteZero;
    if (l.maxWriteZero) node.limits.maxZeroes = l.maxWriteZero;
    if (l.optDiscard) node.limits.discardAlignment = l.optDiscard;
    if (l.maxDiscard) node.limits.maxDiscard = l.maxDiscard;
  },

  childPerm(node, child, parents) {
    const p = defaultChildPerms(node, child, parents);
    return { perm: p.perm | node.state.takePerms, shared: p.shared & ~node.state.unsharePerms };
  },

  supportedWriteFlags: (node) => REQ_WRITE_UNCHANGED | (supportedWriteFlags(node.state.image.node) & REQ_FUA),
  supportedZeroFlags: (node) =>
    REQ_WRITE_UNCHANGED | (supportedZeroFlags(node.state.image.node) & (REQ_FUA | REQ_MAY_UNMAP | REQ_NO_FALLBACK)),

  getLength: (node) => node.state.image.getLength(),

  async read(node, offset, bytes, buf, flags) {
    await checkRules(node, offset, bytes, 'read');
    return node.state.image.read(offset, bytes, buf, flags);
  },
  async write(node, offset, bytes, buf, flags) {
    await checkRules(node, offset, bytes, 'write');
    return node.state.image.write(offset, bytes, buf, flags);
  },
  /** Zero writes smaller than the zero alignment are refused, to exercise the generic fallback. */
  async writeZeroes(node, offset, bytes, flags) {
    if (bytes < Math.max(node.limits.requestAlignment, node.limits.zeroAlignment)) throw errno('ENOTSUP');
    await checkRules(node, offset, bytes, 'write-zeroes');
    return node.state.image.writeZeroes(offset, bytes, flags);
  },
  /** Pieces below the request alignment are dropped (QEMU 7.2 asserts on some of them). */
  async discard(node, offset, bytes) {
    if (bytes < node.limits.requestAlignment) return;
    await checkRules(node, offset, bytes, 'discard');
    return node.state.image.discard(offset, bytes);
  },
  flushToDisk: (node) => checkRules(node, undefined, 0, 'flush'),
  truncate: (node, size, exact, prealloc) => node.state.image.truncate(size, exact, prealloc),
  async blockStatus(node, offset, bytes) {
    await checkRules(node, offset, bytes, 'block-status');
    return { status: STATUS_RAW, pnum: bytes, map: offset, file: node.state.image.node };
  },

  debugEvent: (node, event) => fireEvent(node, event),

  debugBreakpoint(node, event, tag) {
    if (!BLKDEBUG_EVENTS.has(event)) throw errno('ENOENT');
    node.state.rules.push({ action: 'suspend', event, state: 0, tag });
  },
  debugRemoveBreakpoint(node, tag) {
    const s = node.state;
    const before = s.rules.length;
    s.rules = s.rules.filter((r) => r.action !== 'suspend' || r.tag !== tag);
    // Held requests go on even when no breakpoint was left to remove (that still fails, as in QEMU).
    resumeTag(node, tag, true);
    if (s.rules.length === before) throw errno('ENOENT');
  },
  debugResume(node, tag) {
    if (!resumeTag(node, tag, false)) throw errno('ENOENT');
  },
  debugIsSuspended: (node, tag) => node.state.suspended.some((r) => r.tag === tag),
};
