/**
 * Opening graphs: an option tree (flat, dotted keys, as QEMU's QDicts) becomes nodes with
 * children by role, references to existing node names, implicit nodes, and permissions checked
 * on every change. A BlockLayer holds one process's nodes; there is no global state.
 */
import { BlkioError, toBlkioError } from '../errors.js';
import type { FlatOptions, OptionScalar, OptionTree } from '../options/types.js';
import { extractPrefix, isJsonFilename, parseJsonFilename, qdictCopy, qdictKeyOrder } from '../options/json.js';
import { parseBool, parseNumber, parseNumberExact, parseSizeOption, parseSizeOptionExact, qemuOptsValue } from '../options/qemuopts.js';
import { BdrvChild, type ChildParent } from './child.js';
import {
  ROLE_COW, ROLE_DATA, ROLE_FILTERED, ROLE_IMAGE, ROLE_METADATA, type BlockDriver, type OptionSpecs, type ParsedOptions,
} from './driver.js';
import { qemuFilename } from './filename.js';
import { BlockNode, limitsFrom, type DetectZeroes } from './node.js';
import { PERM_ALL, refreshPermissions, type PermPair } from './permissions.js';

/** How a node is being opened: what it inherits from its parent. */
export interface OpenFlags {
  /** Open as a protocol: no format probing, the driver comes from the filename prefix. */
  protocol: boolean;
  /** Defaults the node takes unless its own options say otherwise (read-only, cache, ...). */
  inherited: FlatOptions;
  /** QEMU's BDRV_O_NO_BACKING: no backing file is opened, and backing options are refused. */
  noBacking?: boolean;
  /**
   * QEMU's BDRV_O_COPY_ON_READ (`-C`): refused on a read-only node once its file child is open,
   * before the driver opens its other children (so before a copy-on-read filter below asks for
   * write permission).
   */
  copyOnRead?: boolean;
  /**
   * QEMU's BDRV_O_NO_IO (qemu-img info): formats open only what describing them needs.
   */
  withoutIo?: boolean;
}

/** A root node's flags: probe the format, no inherited options. */
const ROOT_FLAGS: OpenFlags = { protocol: false, inherited: {} };

/** Boolean options every node takes (QEMU's bdrv_runtime_opts). */
const GENERIC_BOOLS = ['read-only', 'auto-read-only', 'force-share', 'cache.direct', 'cache.no-flush'] as const;
const GENERIC_OPTIONS = ['node-name', ...GENERIC_BOOLS, 'discard', 'detect-zeroes'] as const;
/** What a node's open flags always say, so its children inherit them (QEMU's update_options_from_flags). */
const FLAG_OPTIONS = ['cache.direct', 'cache.no-flush', 'read-only', 'auto-read-only'] as const;
const DETECT_ZEROES = ['off', 'on', 'unmap'] as const;

/** Everything a driver's `open` may do: read its validated options and open its children. */
export class OpenContext {
  /** Edges this open attached, released again if the open fails. */
  readonly opened: BdrvChild[] = [];
  /** Child nodes this open created (not referenced ones), closed again if the open fails. */
  readonly created: BlockNode[] = [];

  constructor(
    readonly layer: BlockLayer,
    readonly node: BlockNode,
    /** Options not yet consumed: child options are taken from here. */
    readonly remaining: FlatOptions,
    readonly opts: ParsedOptions,
    /** The node's effective options (defaults included): what its children inherit. */
    readonly effective: FlatOptions,
    /** Opened without I/O (QEMU's BDRV_O_NO_IO): what its children opened by the driver inherit. */
    readonly withoutIo: boolean,
  ) {}

  /** Take the `prefix.*` options (removing them), e.g. a list like blkdebug's `inject-error`. */
  takeOptions(prefix: string): FlatOptions {
    return extractPrefix(this.remaining, prefix);
  }

  warn(text: string): void {
    this.layer.warn(text);
  }

  /** One of the node's open flags as QemuOpts reads it: off unless the option says on. */
  flag(key: (typeof FLAG_OPTIONS)[number]): boolean {
    return parseBool(key, qemuOptsValue(this.effective[key]) ?? 'off');
  }

  /**
   * Open the child `name` from the `name` reference or the `name.*` options (or `filename`),
   * attach it in `role`, and return the edge; undefined when absent and allowNone. Errors of
   * the child's open get `openErrorPrefix`.
   */
  async openChild(
    name: string, role: number, opts: { filename?: string; allowNone?: boolean; openErrorPrefix?: string } = {},
  ): Promise<BdrvChild | undefined> {
    const flags = childFlags(this.effective, this.node.driver.kind === 'protocol', this.node.driver.kind === 'format', role, this.withoutIo);
    let child: OpenedChild | undefined;
    try {
      child = await this.layer.openChildNode(this.remaining, name, opts.filename, flags, opts.allowNone ?? false);
    } catch (e) {
      throw opts.openErrorPrefix !== undefined && e instanceof BlkioError ? e.prepend(opts.openErrorPrefix) : e;
    }
    if (!child) return undefined;
    if (child.created) this.created.push(child.node);
    if (reaches(child.node, this.node)) {
      throw new BlkioError('EINVAL', `Making '${child.node.nodeName}' a ${name} child of '${this.node.nodeName}' would create a cycle`);
    }
    const edge = new BdrvChild(this.node, name, role, child.node);
    this.node.children.push(edge);
    child.node.parents.push(edge);
    this.opened.push(edge);
    return edge;
  }
}

/**
 * QEMU's inheritance rules for a child in `role` of a node with `parent` options: whether it is
 * opened as a protocol (no probing), and which options flow down as defaults.
 */
function childFlags(
  parent: FlatOptions, parentIsProtocol: boolean, parentIsFormat: boolean, role: number, withoutIo: boolean,
): OpenFlags {
  let protocol = parentIsProtocol;
  // Plain data children of non-formats (quorum, blkverify) are probed ...
  if (!parentIsFormat && role & ROLE_DATA && !(role & (ROLE_METADATA | ROLE_FILTERED))) protocol = false;
  // ... children of formats (except backing files) and metadata children never are.
  if ((parentIsFormat && !(role & ROLE_COW)) || role & ROLE_METADATA) protocol = true;
  const inherited: FlatOptions = {};
  const copy = (key: string): void => {
    if (parent[key] !== undefined) inherited[key] = parent[key];
  };
  copy('cache.direct');
  copy('cache.no-flush');
  copy('force-share');
  if (role & ROLE_COW) {
    inherited['read-only'] = 'on';
    inherited['auto-read-only'] = 'off';
  } else {
    copy('read-only');
    copy('auto-read-only');
  }
  inherited.discard = 'unmap';
  return { protocol, inherited, withoutIo };
}

/** How many leading bytes of a file format probing looks at (QEMU 7.2 reads one sector). */
const PROBE_BYTES = 512;

/** A parent used only to read the first bytes of a file while probing its format. */
const PROBE_USER: ChildParent = { describe: () => 'format probing' };

/** A child node and whether this open created it (a referenced node is not ours to close). */
interface OpenedChild {
  node: BlockNode;
  created: boolean;
}

export class BlockLayer {
  /** Every open node by name (generated names included). */
  readonly nodes = new Map<string, BlockNode>();
  /** User-created objects (`--object throttle-group,id=...`) by id. */
  readonly objects = new Map<string, unknown>();
  /** Lines drivers print on stdout as QEMU does (blkdebug's breakpoint messages). */
  print: (line: string) => void = (line) => console.log(line);
  /**
   * QAPI events QEMU sends to a QMP monitor (QUORUM_REPORT_BAD, ...). qemu-io and qemu-img have
   * no monitor, so by default they go nowhere; `blkio io --events` prints each as a JSON line.
   */
  emitEvent: (event: OptionTree) => void = () => {};
  /**
   * Ends the program from inside the block layer, as QEMU's exit(1) in blkverify and quorum's
   * blkverify mode does: the message on stderr, exit status 1. Tests replace it with a throw.
   */
  fatal: (message: string) => never = (message) => {
    console.error(message);
    return process.exit(1);
  };
  /** Images are opened for qemu-img check (QEMU's BDRV_O_CHECK): formats leave to the check what it reports itself. */
  openForCheck = false;
  private readonly drivers = new Map<string, BlockDriver<any>>();
  private nameCounter = 0;

  constructor(
    drivers: Iterable<BlockDriver<any>>,
    /** Where warnings go (the CLI prefixes them with the program name). */
    public warn: (text: string) => void = () => {},
  ) {
    for (const d of drivers) this.drivers.set(d.name, d);
  }

  driver(name: string): BlockDriver<any> | undefined {
    return this.drivers.get(name);
  }

  findNode(name: string): BlockNode | undefined {
    return this.nodes.get(name);
  }

  findNodeOrThrow(name: string): BlockNode {
    const node = this.nodes.get(name);
    if (!node) throw new BlkioError('ENOENT', `Cannot find device='' nor node-name='${name}'`);
    return node;
  }

  /** A child given as a name: QEMU looks it up as a device id and as a node name. */
  private findReference(name: string): BlockNode {
    const node = this.nodes.get(name);
    if (!node) throw new BlkioError('ENOENT', `Cannot find device='${name}' nor node-name='${name}'`);
    return node;
  }

  /** Nodes the user can see: named or generated, but not implicit ones. */
  visibleNodes(): BlockNode[] {
    return [...this.nodes.values()].filter((n) => !n.implicit);
  }

  /** The protocol a filename names (`null-co://`, `file:x`); plain paths and option filenames are `file`. */
  private protocolFor(filename: string, mayHavePrefix: boolean): BlockDriver<any> {
    // Host devices first, even where the name looks like it has a prefix (as QEMU: device
    // names with colons are common).
    let device: { driver?: BlockDriver<any>; score: number } = { score: 0 };
    for (const d of this.drivers.values()) {
      const score = d.probeDevice?.(filename) ?? 0;
      if (score > device.score) device = { driver: d, score };
    }
    if (device.driver) return device.driver;
    const colon = filename.search(/[:/]/);
    if (!mayHavePrefix || colon < 0 || filename[colon] !== ':') return this.drivers.get('file')!;
    const prefix = filename.slice(0, colon);
    for (const d of this.drivers.values()) {
      if (d.kind === 'protocol' && (d.protocolPrefix === prefix || d.otherProtocolPrefixes?.includes(prefix))) return d;
    }
    throw new BlkioError('EINVAL', `Unknown protocol '${prefix}'`);
  }

  /**
   * QEMU's bdrv_open_child_bs: the child `key` of a node whose options are `options`, either a
   * reference (`key` names a node) or a new node from `key.*` and `filename`. Both are removed
   * from `options`. Undefined when nothing describes the child and `allowNone`.
   */
  async openChildNode(
    options: FlatOptions, key: string, filename: string | undefined, flags: OpenFlags, allowNone: boolean,
  ): Promise<OpenedChild | undefined> {
    const sub = extractPrefix(options, key);
    const value = options[key];
    delete options[key];
    const reference = typeof value === 'string' ? value : undefined;
    const hasOptions = Object.keys(sub).length > 0;
    if (filename === undefined && reference === undefined && !hasOptions) {
      if (allowNone) return undefined;
      throw new BlkioError('EINVAL', `A block device must be specified for "${key}"`);
    }
    if (reference === undefined) return { node: await this.openNode(filename, sub, flags), created: true };
    if (filename !== undefined || hasOptions) {
      throw new BlkioError('EINVAL', 'Cannot reference an existing block device with additional options or a new filename');
    }
    return { node: this.findReference(reference), created: false };
  }

  /**
   * Open one node (and its children) from a filename and/or flat options, in the order QEMU's
   * bdrv_open works (which decides which of several errors is reported): `json:` options,
   * inherited defaults, the driver (named, from the filename's protocol prefix, or probed on the
   * `file` child, which formats and filters open first), generic options, the node name, the
   * driver's options and children, the backing file, then a check for options nobody used.
   *
   * `options` is treated as a QDict: its key order is QEMU's insertion order, and the places
   * where QEMU copies a QDict (and so reorders it) are repeated, so that the first unsupported
   * option QEMU names is the one named here.
   */
  async openNode(filename: string | undefined, options: FlatOptions, flags: OpenFlags = ROOT_FLAGS): Promise<BlockNode> {
    options = { ...options };
    if (filename !== undefined && isJsonFilename(filename)) {
      // The filename's options have lower priority than those given directly.
      const fromJson = parseJsonFilename(filename);
      for (const key of qdictKeyOrder(Object.keys(fromJson))) if (!(key in options)) options[key] = fromJson[key];
      filename = undefined;
    }
    const explicit: FlatOptions = {};
    for (const key of GENERIC_OPTIONS) if (options[key] !== undefined && key !== 'node-name') explicit[key] = options[key];
    for (const [key, value] of Object.entries(flags.inherited)) if (!(key in options)) options[key] = value;

    const driverName = typeof options.driver === 'string' ? options.driver : undefined;
    let driver = driverName === undefined ? undefined : this.drivers.get(driverName);
    if (driverName !== undefined && !driver) throw new BlkioError('EINVAL', `Unknown driver '${driverName}'`);
    const protocol = driver ? driver.kind === 'protocol' : flags.protocol;
    for (const key of FLAG_OPTIONS) if (!(key in options)) options[key] = 'off';
    let parseFilename = false;
    if (protocol && filename !== undefined) {
      if ('filename' in options) throw new BlkioError('EINVAL', "Can't specify 'file' and 'filename' options at the same time");
      options.filename = filename;
      parseFilename = true;
    }
    if (protocol && !driver) {
      if (typeof options.filename !== 'string') throw new BlkioError('EINVAL', 'Must specify either driver or file');
      driver = this.protocolFor(options.filename, parseFilename);
    }
    // The name as given stays the node's filename even when the driver splits it up (blkdebug:...).
    const givenFilename = parseFilename ? (options.filename as string) : undefined;
    if (driver?.parseFilename && parseFilename) {
      driver.parseFilename(options.filename as string, options);
      if (!('filename' in driver.options)) delete options.filename;
    }
    const effective = { ...options };
    options = qdictCopy(options);
    delete options.driver;

    let noBacking = flags.noBacking ?? false;
    if (options.backing === null || options.backing === '') {
      if (options.backing === '') this.warn('warning: Use of "backing": "" is deprecated; use "backing": null instead');
      noBacking = true;
      delete options.backing;
    }

    let file: OpenedChild | undefined;
    let node: BlockNode | undefined;
    let ctx: OpenContext | undefined;
    try {
      if (!protocol) {
        // Formats and filters: the file child first (it may be needed for probing); the driver
        // then finds it by name. QEMU opens it before the node has its flags: never without I/O.
        file = await this.openChildNode(options, 'file', filename, childFlags(effective, false, true, ROLE_IMAGE, false), true);
        if (file) options.file = file.node.nodeName;
      }
      let probed = false;
      if (!driver) {
        if (!file) throw new BlkioError('EINVAL', 'Must specify either driver or file');
        driver = this.drivers.get(await this.probeFormat(file.node))!;
        probed = true;
      }

      const generic = takeGeneric(options, driver, flags.copyOnRead ?? false);
      const nodeName = generic.nodeName ?? this.generateName();
      if (generic.nodeName !== undefined) this.checkNodeName(generic.nodeName);
      node = new BlockNode(this, driver, nodeName, generic.readOnly, generic.nodeName === undefined);
      node.probed = probed;
      node.discardUnmap = generic.discardUnmap;
      node.detectZeroes = generic.detectZeroes;
      node.forceShare = generic.forceShare;
      node.noFlush = generic.noFlush;
      node.withoutIo = flags.withoutIo ?? false;
      node.openOptions = { driver: driver.name, ...explicit };
      node.givenOptions = { ...options };
      if (protocol && typeof effective.filename === 'string') node.filename = effective.filename;
      else if (givenFilename !== undefined) node.filename = givenFilename;
      // The name is taken before the driver opens the other children, as in QEMU.
      this.nodes.set(nodeName, node);

      const given = Object.keys(driver.options).filter((k) => options[k] !== undefined && options[k] !== null);
      const parsed = parseDriverOptions(driver, options);
      for (const key of given) {
        const value = parsed[key];
        node.openOptions[key] = typeof value === 'bigint' ? Number(value) : (value as OptionScalar);
      }
      ctx = new OpenContext(this, node, options, parsed, effective, node.withoutIo);
      node.state = await driver.open(node, ctx);
      // The children so far take their permissions (and file locks) before the backing file
      // opens, as QEMU's attach does, so a backing chain that reuses a file fails as there.
      refreshPermissions(new Map(), [node]);
      if (!noBacking) await this.openBacking(node, ctx);
      const leftover = qdictKeyOrder(Object.keys(options))[0];
      if (leftover !== undefined) {
        throw new BlkioError('EINVAL', driver.kind === 'protocol'
          ? `Block protocol '${driver.name}' doesn't support the option '${leftover}'`
          : `Block format '${driver.name}' does not support the option '${leftover}'`);
      }
      node.filename = qemuFilename(node);
      inheritLimits(node);
      refreshPermissions(new Map(), [node]);
      return node;
    } catch (e) {
      if (node && this.nodes.get(node.nodeName) === node) this.nodes.delete(node.nodeName);
      if (node && ctx) await node.driver.close?.(node).catch(() => {});
      for (const edge of ctx?.opened ?? []) this.releaseEdge(edge);
      const created = [...(ctx?.created ?? []), ...(file?.created ? [file.node] : [])];
      for (const child of created) if (child.parents.length === 0) await this.closeNode(child);
      throw e;
    }
  }

  /**
   * The backing child: `backing` names a node, `backing.*` describes one, else the image header
   * names a file. Drivers without backing files refuse any of these.
   */
  private async openBacking(node: BlockNode, ctx: OpenContext): Promise<void> {
    const options = ctx.remaining;
    const reference = typeof options.backing === 'string' ? options.backing : undefined;
    const hasOptions = Object.keys(options).some((k) => k.startsWith('backing.'));
    let filename: string | undefined;
    if (reference === undefined && options['backing.file.filename'] === undefined) {
      if (!node.backingFile && !hasOptions) return;
      filename = node.backingFile ? resolveBackingFilename(node.filename || node.file?.node.filename || '', node.backingFile) : undefined;
    }
    if (!node.driver.supportsBacking) throw new BlkioError('EINVAL', "Driver doesn't support backing files");
    if (reference === undefined && node.backingFormat && options['backing.driver'] === undefined) options['backing.driver'] = node.backingFormat;
    // Attaching it (a cycle) fails without the prefix.
    await ctx.openChild('backing', ROLE_COW, { filename, openErrorPrefix: 'Could not open backing file: ' });
  }

  /** Guess the format of a file from its first bytes. */
  private async probeFormat(file: BlockNode): Promise<string> {
    const edge = new BdrvChild(PROBE_USER, 'file', ROLE_IMAGE, file);
    // No consistent read, as in QEMU: a header read to guess the format needs none (and so
    // probing takes no lock byte).
    attachChild(edge, 0, PERM_ALL);
    try {
      const len = Math.min(PROBE_BYTES, file.getLength());
      const header = new Uint8Array(len);
      if (len > 0) {
        await edge.read(0, len, header).catch((e: unknown) => {
          throw toBlkioError(e).prepend('Could not read image for determining its format: ');
        });
      }
      return this.probeHeader(header, file.filename);
    } finally {
      detachChild(edge);
    }
  }

  /** The driver whose probe scores the header highest; raw (which matches anything) otherwise. */
  probeHeader(header: Uint8Array, filename: string): string {
    let best = { name: 'raw', score: 0 };
    for (const d of this.drivers.values()) {
      const score = d.probe?.(header, filename) ?? 0;
      if (score > best.score) best = { name: d.name, score };
    }
    return best.name;
  }

  private generateName(): string {
    let name: string;
    do name = `#block${String(++this.nameCounter).padStart(3, '0')}`;
    while (this.nodes.has(name));
    return name;
  }

  private checkNodeName(name: string): void {
    if (!/^[A-Za-z][A-Za-z0-9\-._]*$/.test(name)) throw new BlkioError('EINVAL', `Invalid node-name: '${name}'`);
    if (this.nodes.has(name)) throw new BlkioError('EEXIST', `Duplicate nodes with node-name='${name}'`);
    if (name.length >= 32) throw new BlkioError('EINVAL', 'Node name too long');
  }

  /**
   * Insert a new filter node above `below`, taking over all of below's parents (used for the
   * implicit copy-on-read node of `-C` and by jobs). The node is hidden when implicit.
   * `childKey` names the filter's child option (`backing` for mirror_top).
   */
  async insertFilterAbove(below: BlockNode, options: FlatOptions, implicit: boolean, childKey = 'file'): Promise<BlockNode> {
    const parents = [...below.parents];
    const filter = await this.openNode(undefined, { ...options, [childKey]: below.nodeName });
    filter.implicit = implicit;
    // Parents inside the filter's own subgraph (a mirror target backed by `below`) stay put.
    for (const edge of parents) if (!(edge.parent instanceof BlockNode && reaches(filter, edge.parent))) replaceChildNode(edge, filter);
    return filter;
  }

  /** Drop an edge and close the child if nothing else uses it and nobody named it. */
  releaseEdge(edge: BdrvChild): void {
    detachChild(edge);
    const parentNode = edge.parent instanceof BlockNode ? edge.parent : undefined;
    if (parentNode) parentNode.children.splice(parentNode.children.indexOf(edge), 1);
  }

  async closeNode(node: BlockNode): Promise<void> {
    if (node.closed) return;
    node.closed = true;
    await node.driver.close?.(node);
    this.nodes.delete(node.nodeName);
    for (const edge of [...node.children]) {
      this.releaseEdge(edge);
      if (edge.node.parents.length === 0) await this.closeNode(edge.node);
    }
  }

  /** Close every node, parents before children. */
  async closeAll(): Promise<void> {
    // Closing a root can make a shared child a root (a mirror target backed by the source).
    for (;;) {
      const roots = [...this.nodes.values()].filter((n) => n.parents.every((e) => !(e.parent instanceof BlockNode)));
      if (roots.length === 0) break;
      for (const n of roots) {
        for (const e of [...n.parents]) detachChild(e);
        await this.closeNode(n);
      }
    }
    for (const n of [...this.nodes.values()]) await this.closeNode(n);
  }
}

// ---------------------------------------------------------------------------------------------
// Edges

/** Attach a new edge (already pointing at its node) with perms; rolled back on conflict. */
export function attachChild(edge: BdrvChild, perm: number, shared: number): void {
  edge.node.parents.push(edge);
  try {
    refreshPermissions(new Map([[edge, { perm, shared: edge.node.forceShare ? PERM_ALL : shared }]]), []);
  } catch (e) {
    edge.node.parents.splice(edge.node.parents.indexOf(edge), 1);
    throw e;
  }
}

export function detachChild(edge: BdrvChild): void {
  const parents = edge.node.parents;
  const i = parents.indexOf(edge);
  if (i >= 0) parents.splice(i, 1);
  edge.perm = 0;
  edge.shared = PERM_ALL;
  refreshPermissions(new Map(), [edge.node]);
}

export function updateEdgePerms(edge: BdrvChild, perm: number, shared: number): void {
  refreshPermissions(new Map<BdrvChild, PermPair>([[edge, { perm, shared: edge.node.forceShare ? PERM_ALL : shared }]]), []);
}

function reaches(from: BlockNode, to: BlockNode): boolean {
  return from === to || from.children.some((edge) => reaches(edge.node, to));
}

/** Point an edge at another node, keeping its permissions (checked on the new node). */
export function replaceChildNode(edge: BdrvChild, to: BlockNode): void {
  const from = edge.node;
  from.parents.splice(from.parents.indexOf(edge), 1);
  edge.node = to;
  to.parents.push(edge);
  try {
    refreshPermissions(new Map([[edge, { perm: edge.perm, shared: edge.shared }]]), [from]);
  } catch (e) {
    to.parents.splice(to.parents.indexOf(edge), 1);
    edge.node = from;
    from.parents.push(edge);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Options

/**
 * The value QemuOpts takes from a QDict entry (strings, numbers and booleans as text); other
 * values (null, lists) are dropped without complaint, as QEMU's qemu_opts_absorb_qdict does.
 */
function takeOption(options: FlatOptions, key: string): string | undefined {
  const value = options[key];
  delete options[key];
  return value === undefined ? undefined : qemuOptsValue(value);
}

interface GenericOptions {
  nodeName?: string;
  readOnly: boolean;
  forceShare: boolean;
  noFlush: boolean;
  discardUnmap: boolean;
  detectZeroes: DetectZeroes;
}

/** The options every node takes, checked in the order QEMU checks them (the filename among them). */
function takeGeneric(options: FlatOptions, driver: BlockDriver<any>, copyOnRead: boolean): GenericOptions {
  const bools: Partial<Record<(typeof GENERIC_BOOLS)[number], boolean>> = {};
  // QemuOpts validates in QDict order, so that order decides which bad value is reported.
  for (const key of qdictKeyOrder(Object.keys(options))) {
    if (!(GENERIC_BOOLS as readonly string[]).includes(key)) continue;
    const text = takeOption(options, key);
    if (text !== undefined) bools[key as (typeof GENERIC_BOOLS)[number]] = parseBool(key, text);
  }
  const nodeName = takeOption(options, 'node-name');
  const discard = takeOption(options, 'discard');
  const detect = takeOption(options, 'detect-zeroes') ?? 'off';
  const readOnly = bools['read-only'] ?? false;
  const forceShare = bools['force-share'] ?? false;
  if (forceShare && !readOnly) throw new BlkioError('EINVAL', 'force-share=on can only be used with read-only images');
  if (driver.needsFilename && (typeof options.filename !== 'string' || options.filename === '')) {
    throw new BlkioError('EINVAL', `The '${driver.name}' block driver requires a file name`);
  }
  if (copyOnRead && readOnly) throw new BlkioError('EINVAL', "Can't use copy-on-read on read-only device");
  let discardUnmap = false;
  if (discard === 'unmap' || discard === 'on') discardUnmap = true;
  else if (discard !== undefined && discard !== 'ignore' && discard !== 'off') throw new BlkioError('EINVAL', 'Invalid discard option');
  if (!(DETECT_ZEROES as readonly string[]).includes(detect)) throw new BlkioError('EINVAL', `invalid parameter value: ${detect}`);
  if (detect === 'unmap' && !discardUnmap) {
    throw new BlkioError('EINVAL', 'setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
  }
  return { nodeName, readOnly, forceShare, noFlush: bools['cache.no-flush'] ?? false, discardUnmap, detectZeroes: detect as DetectZeroes };
}

/**
 * Validate and convert the driver's declared options, removing them from `options`. Values are
 * checked in QDict order (QEMU's), so of two bad values the same one is reported. Enums are
 * plain strings to QemuOpts: the driver parses them afterwards, in the order they are declared.
 */
export function parseDriverOptions(driver: { options: OptionSpecs }, options: FlatOptions): ParsedOptions {
  const out: ParsedOptions = {};
  for (const [key, spec] of Object.entries(driver.options)) out[key] = spec.default;
  for (const key of qdictKeyOrder(Object.keys(options))) {
    const spec = Object.hasOwn(driver.options, key) ? driver.options[key] : undefined;
    if (!spec || (spec.type === 'json-string' && typeof options[key] !== 'string')) continue;
    const text = takeOption(options, key);
    if (text === undefined) continue;
    switch (spec.type) {
      case 'bool': out[key] = parseBool(key, text); break;
      case 'number': out[key] = parseNumber(key, text); break;
      case 'exact-number': out[key] = parseNumberExact(key, text); break;
      case 'size': out[key] = parseSizeOption(key, text); break;
      case 'exact-size': out[key] = parseSizeOptionExact(key, text); break;
      default: out[key] = text;
    }
  }
  for (const [key, spec] of Object.entries(driver.options)) {
    const text = out[key];
    // QEMU parses these with qapi_enum_parse, whose wording this is.
    if (spec.type === 'enum' && typeof text === 'string' && !spec.values!.includes(text)) {
      throw new BlkioError('EINVAL', `invalid parameter value: ${text}`);
    }
  }
  return out;
}

/** Filters and thin formats take the limits of the child they pass requests to. */
export function inheritLimits(node: BlockNode): void {
  const below = node.filteredChild?.node;
  if (below) node.limits = limitsFrom(below);
  node.driver.refreshLimits?.(node);
}

/** Whether a filename starts with a protocol prefix (`nbd:`, `json:`, `null-co:`, ...). */
export function hasProtocolPrefix(filename: string): boolean {
  return /^[a-z][a-z0-9+.-]*:/i.test(filename);
}

/** A relative backing name is relative to the directory of the image that names it. */
export function resolveBackingFilename(imageFilename: string, backing: string): string {
  if (backing.startsWith('/') || hasProtocolPrefix(backing) || imageFilename.startsWith('json:')) return backing;
  const slash = imageFilename.lastIndexOf('/');
  return slash < 0 ? backing : imageFilename.slice(0, slash + 1) + backing;
}
