/**
 * Opening graphs: an option tree (flat, dotted keys, as QEMU's QDicts) becomes nodes with
 * children by role, references to existing node names, implicit nodes, and permissions checked
 * on every change. A BlockLayer holds one process's nodes; there is no global state.
 */
import { BlkioError } from '../errors.js';
import type { FlatOptions, OptionScalar, OptionTree } from '../options/types.js';
import { extractPrefix, isJsonFilename, parseJsonFilename, toQemuJson } from '../options/json.js';
import { parseBool, parseNumber, parseSizeOption } from '../options/qemuopts.js';
import { BdrvChild, type ChildParent } from './child.js';
import {
  ROLE_COW, ROLE_DATA, ROLE_FILTERED, ROLE_IMAGE, ROLE_METADATA, type BlockDriver, type OptionSpecs, type ParsedOptions,
} from './driver.js';
import { BlockNode, type DetectZeroes } from './node.js';
import { PERM_CONSISTENT_READ, PERM_ALL, refreshPermissions, type PermPair } from './permissions.js';

/** How a node is being opened: what it inherits from its parent. */
export interface OpenFlags {
  /** Open as a protocol: no format probing, the driver comes from the filename prefix. */
  protocol: boolean;
  /** Defaults the node takes unless its own options say otherwise (read-only, cache, ...). */
  inherited: FlatOptions;
}

const GENERIC_OPTIONS = [
  'node-name', 'read-only', 'auto-read-only', 'force-share', 'discard', 'detect-zeroes',
  'cache.direct', 'cache.no-flush',
] as const;

/** Everything a driver's `open` may do: read its validated options and open its children. */
export class OpenContext {
  /** Children this open created, released again if the open fails. */
  readonly opened: BdrvChild[] = [];

  constructor(
    readonly layer: BlockLayer,
    readonly node: BlockNode,
    /** Options not yet consumed: child options are taken from here. */
    readonly remaining: FlatOptions,
    readonly opts: ParsedOptions,
    readonly filename: string | undefined,
    private readonly flags: OpenFlags,
    private readonly preopened: Map<string, BlockNode>,
  ) {}

  /** Take the `prefix.*` options (removing them), e.g. a list like blkdebug's `inject-error`. */
  takeOptions(prefix: string): FlatOptions {
    return extractPrefix(this.remaining, prefix);
  }

  warn(text: string): void {
    this.layer.warn(text);
  }

  /**
   * Open the child `name` from the `name` reference or the `name.*` options (or `filename`),
   * attach it in `role`, and return the edge; undefined when absent and allowNone.
   */
  async openChild(name: string, role: number, opts: { filename?: string; allowNone?: boolean } = {}): Promise<BdrvChild | undefined> {
    const reference = this.remaining[name];
    delete this.remaining[name];
    const sub = extractPrefix(this.remaining, name);
    let child: BlockNode | undefined = this.preopened.get(name);
    if (child) {
      // Opened already for format probing.
    } else if (typeof reference === 'string') {
      if (Object.keys(sub).length > 0) {
        throw new BlkioError('EINVAL', 'Cannot reference an existing block device with additional options or a new filename');
      }
      child = this.layer.findNodeOrThrow(reference);
    } else if (reference === null || (reference === undefined && Object.keys(sub).length === 0 && !opts.filename)) {
      if (opts.allowNone) return undefined;
      throw new BlkioError('EINVAL', `A block device must be specified for "${name}"`);
    } else {
      child = await this.layer.openNode(opts.filename, sub, this.childFlags(role));
    }
    const edge = new BdrvChild(this.node, name, role, child);
    this.node.children.push(edge);
    child.parents.push(edge);
    this.opened.push(edge);
    return edge;
  }

  /** QEMU's inheritance rules: which children get probed, and which options flow down. */
  private childFlags(role: number): OpenFlags {
    const parentIsFormat = this.node.driver.kind === 'format';
    let protocol = this.flags.protocol;
    if (!parentIsFormat && role & ROLE_DATA && !(role & (ROLE_METADATA | ROLE_FILTERED))) protocol = false;
    if ((parentIsFormat && !(role & ROLE_COW)) || role & ROLE_METADATA) protocol = true;
    const inherited: FlatOptions = { discard: 'unmap' };
    for (const key of ['cache.direct', 'cache.no-flush']) {
      const v = this.node.openOptions[key] ?? this.flags.inherited[key];
      if (v !== undefined) inherited[key] = v;
    }
    if (role & ROLE_COW) {
      inherited['read-only'] = 'on';
      inherited['auto-read-only'] = 'off';
    } else {
      inherited['read-only'] = this.node.readOnly ? 'on' : 'off';
    }
    return { protocol, inherited };
  }
}

/** A parent used only to read the first bytes of a file while probing its format. */
const PROBE_USER: ChildParent = { describe: () => 'format probing' };

export class BlockLayer {
  /** Every open node by name (generated names included). */
  readonly nodes = new Map<string, BlockNode>();
  /** User-created objects (`--object throttle-group,id=...`) by id. */
  readonly objects = new Map<string, unknown>();
  /** Lines drivers print on stdout as QEMU does (blkdebug's breakpoint messages). */
  print: (line: string) => void = (line) => console.log(line);
  /** QAPI events QEMU sends to a QMP monitor (QUORUM_REPORT_BAD, ...): by default a JSON line on stderr. */
  emitEvent: (event: OptionTree) => void = (event) => console.error(toQemuJson(event));
  /**
   * Ends the program from inside the block layer, as QEMU's exit(1) in blkverify and quorum's
   * blkverify mode does: the message on stderr, exit status 1. Tests replace it with a throw.
   */
  fatal: (message: string) => never = (message) => {
    console.error(message);
    return process.exit(1);
  };
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

  /** Nodes the user can see: named or generated, but not implicit ones. */
  visibleNodes(): BlockNode[] {
    return [...this.nodes.values()].filter((n) => !n.implicit);
  }

  private protocolFor(filename: string): BlockDriver<any> | undefined {
    for (const d of this.drivers.values()) {
      if (d.kind !== 'format' && d.protocolPrefix && filename.startsWith(d.protocolPrefix + ':')) return d;
    }
    return undefined;
  }

  /**
   * Open one node (and its children) from a filename and/or flat options, the way QEMU's
   * bdrv_open does: `json:` names, driver from options, filename prefix or probing, generic
   * options, driver options, children, backing, then a check for options nobody used.
   */
  async openNode(filename: string | undefined, options: FlatOptions, flags: OpenFlags = { protocol: false, inherited: {} }): Promise<BlockNode> {
    options = { ...options };
    if (filename !== undefined && isJsonFilename(filename)) {
      const fromJson = parseJsonFilename(filename);
      for (const [k, v] of Object.entries(fromJson)) if (!(k in options)) options[k] = v;
      filename = undefined;
    }
    const givenGeneric = GENERIC_OPTIONS.filter((k) => options[k] !== undefined);
    for (const [k, v] of Object.entries(flags.inherited)) if (!(k in options)) options[k] = v;

    let driverName = takeString(options, 'driver');
    const preopened = new Map<string, BlockNode>();
    if (driverName === undefined) {
      const fname = filename ?? (typeof options.filename === 'string' ? options.filename : undefined);
      if (flags.protocol || (fname === undefined && options.file === undefined && !hasPrefix(options, 'file'))) {
        if (fname === undefined) throw new BlkioError('EINVAL', 'Must specify either driver or file');
        driverName = (this.protocolFor(fname) ?? this.drivers.get('file'))!.name;
      } else {
        const fileOptions = extractPrefix(options, 'file');
        const fileRef = options.file;
        delete options.file;
        const file = typeof fileRef === 'string'
          ? this.findNodeOrThrow(fileRef)
          : await this.openNode(filename, fileOptions, { protocol: true, inherited: pickInherited(options) });
        preopened.set('file', file);
        const readOnly = options['read-only'] !== undefined && parseBool('read-only', options['read-only']);
        driverName = await this.probeFormat(file, filename ?? file.filename, !readOnly);
      }
    }
    const driver = this.drivers.get(driverName);
    if (!driver) throw new BlkioError('EINVAL', `Unknown driver '${driverName}'`);

    if (driver.kind === 'protocol' && filename !== undefined) {
      if (options.filename !== undefined) throw new BlkioError('EINVAL', "Can't specify 'file' and 'filename' options at the same time");
      if (driver.parseFilename) driver.parseFilename(filename, options);
      else options.filename = filename;
      filename = undefined;
    }

    const generic = takeGeneric(options, givenGeneric);
    const nodeName = generic.nodeName ?? this.generateName();
    if (generic.nodeName !== undefined) this.checkNodeName(generic.nodeName);
    const node = new BlockNode(this, driver, nodeName, generic.readOnly, generic.nodeName === undefined);
    node.discardUnmap = generic.discardUnmap;
    node.detectZeroes = generic.detectZeroes;
    node.forceShare = generic.forceShare;
    node.openOptions = { driver: driver.name, ...generic.explicit };

    const given = Object.keys(driver.options).filter((k) => options[k] !== undefined && options[k] !== null);
    const parsed = parseDriverOptions(driver, options);
    for (const k of given) node.openOptions[k] = parsed[k] as OptionScalar;
    const ctx = new OpenContext(this, node, options, parsed, filename, flags, preopened);
    try {
      node.state = await driver.open(node, ctx);
      if (driver.supportsBacking) await this.openBacking(node, ctx);
      else if (options.backing === null) delete options.backing; // "no backing" is fine for any driver
      const leftover = Object.keys(options)[0];
      if (leftover !== undefined) {
        throw new BlkioError('EINVAL', driver.kind === 'protocol'
          ? `Block protocol '${driver.name}' doesn't support the option '${leftover}'`
          : `Block format '${driver.name}' does not support the option '${leftover}'`);
      }
      if (!node.filename) node.filename = node.filteredChild?.node.filename ?? node.file?.node.filename ?? '';
      inheritLimits(node);
      refreshPermissions(new Map(), [node]);
    } catch (e) {
      await driver.close?.(node).catch(() => {});
      for (const edge of ctx.opened) this.releaseEdge(edge);
      for (const n of preopened.values()) if (n.parents.length === 0) await this.closeNode(n);
      throw e;
    }
    this.nodes.set(nodeName, node);
    return node;
  }

  /** Backing chain: `backing` option (null = none, a name, or options) else the image header. */
  private async openBacking(node: BlockNode, ctx: OpenContext): Promise<void> {
    const reference = ctx.remaining.backing;
    const hasOptions = hasPrefix(ctx.remaining, 'backing');
    if (reference === null || reference === '') {
      delete ctx.remaining.backing;
      if (reference === '') this.warn('Use of "backing": "" is deprecated; use "backing": null instead');
      return;
    }
    if (reference === undefined && !hasOptions && !node.backingFile) return;
    let filename: string | undefined;
    if (reference === undefined && node.backingFile) {
      filename = resolveBackingFilename(node.filename || node.file?.node.filename || '', node.backingFile);
      if (node.backingFormat && ctx.remaining['backing.driver'] === undefined) ctx.remaining['backing.driver'] = node.backingFormat;
    }
    try {
      await ctx.openChild('backing', ROLE_COW, { filename });
    } catch (e) {
      throw e instanceof BlkioError && typeof reference !== 'string' ? e.prepend('Could not open backing file: ') : e;
    }
  }

  /** Guess the format from the first bytes; guessing raw for a writable image earns QEMU's warning. */
  private async probeFormat(file: BlockNode, filename: string, writable: boolean): Promise<string> {
    const edge = new BdrvChild(PROBE_USER, 'file', ROLE_IMAGE, file);
    attachChild(edge, PERM_CONSISTENT_READ, PERM_ALL);
    try {
      const len = Math.min(2048, file.getLength());
      const header = new Uint8Array(2048);
      if (len > 0) await edge.read(0, len, header.subarray(0, len));
      let best: { name: string; score: number } = { name: 'raw', score: 0 };
      for (const d of this.drivers.values()) {
        const score = d.probe?.(header.subarray(0, len), filename) ?? 0;
        if (score > best.score) best = { name: d.name, score };
      }
      if (best.name === 'raw' && writable) {
        this.warn(
          `WARNING: Image format was not specified for '${filename}' and probing guessed raw.\n` +
            '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
            "         Specify the 'raw' format explicitly to remove the restrictions.",
        );
      }
      return best.name;
    } finally {
      detachChild(edge);
    }
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
    const roots = [...this.nodes.values()].filter((n) => n.parents.every((e) => !(e.parent instanceof BlockNode)));
    for (const n of roots) {
      for (const e of [...n.parents]) detachChild(e);
      await this.closeNode(n);
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

function takeString(options: FlatOptions, key: string): string | undefined {
  const v = options[key];
  delete options[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new BlkioError('EINVAL', `Invalid parameter type for '${key}', expected: string`);
  return v;
}

function hasPrefix(options: FlatOptions, prefix: string): boolean {
  return Object.keys(options).some((k) => k.startsWith(prefix + '.'));
}

function pickInherited(options: FlatOptions): FlatOptions {
  const out: FlatOptions = {};
  for (const key of ['read-only', 'auto-read-only', 'cache.direct', 'cache.no-flush']) {
    if (options[key] !== undefined) out[key] = options[key];
  }
  return out;
}

interface GenericOptions {
  nodeName?: string;
  readOnly: boolean;
  forceShare: boolean;
  discardUnmap: boolean;
  detectZeroes: DetectZeroes;
  /** What the user set explicitly, for printing the graph back. */
  explicit: FlatOptions;
}

/** Generic node options; `given` are those the user set (the rest were inherited defaults). */
function takeGeneric(options: FlatOptions, given: readonly string[]): GenericOptions {
  const explicit: FlatOptions = {};
  for (const key of given) explicit[key] = options[key] as OptionScalar;
  const nodeName = takeString(options, 'node-name');
  const readOnly = takeBool(options, 'read-only', false);
  takeBool(options, 'auto-read-only', false);
  const forceShare = takeBool(options, 'force-share', false);
  takeBool(options, 'cache.direct', false);
  takeBool(options, 'cache.no-flush', false);
  const discard = takeString(options, 'discard') ?? 'ignore';
  let discardUnmap: boolean;
  if (discard === 'ignore' || discard === 'off') discardUnmap = false;
  else if (discard === 'unmap' || discard === 'on') discardUnmap = true;
  else throw new BlkioError('EINVAL', `Invalid discard option`);
  const detect = takeString(options, 'detect-zeroes') ?? 'off';
  if (detect !== 'off' && detect !== 'on' && detect !== 'unmap') {
    throw new BlkioError('EINVAL', `Parameter 'detect-zeroes' does not accept value '${detect}'`);
  }
  if (detect === 'unmap' && !discardUnmap) {
    throw new BlkioError('EINVAL', 'setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
  }
  if (forceShare && !readOnly) throw new BlkioError('EINVAL', 'force-share=on can only be used with read-only images');
  delete explicit['node-name'];
  return { nodeName, readOnly, forceShare, discardUnmap, detectZeroes: detect, explicit };
}

function takeBool(options: FlatOptions, key: string, dflt: boolean): boolean {
  const v = options[key];
  delete options[key];
  return v === undefined ? dflt : parseBool(key, v);
}

/** Validate and convert the driver's declared options, removing them from `options`. */
export function parseDriverOptions(driver: { options: OptionSpecs }, options: FlatOptions): ParsedOptions {
  const out: ParsedOptions = {};
  for (const [key, spec] of Object.entries(driver.options)) {
    const raw = options[key];
    if (raw === undefined || raw === null) {
      out[key] = spec.default;
      continue;
    }
    delete options[key];
    switch (spec.type) {
      case 'bool': out[key] = parseBool(key, raw); break;
      case 'number': out[key] = parseNumber(key, raw); break;
      case 'size': out[key] = parseSizeOption(key, raw); break;
      case 'enum':
        if (!spec.values!.includes(String(raw))) {
          throw new BlkioError('EINVAL', `Parameter '${key}' does not accept value '${String(raw)}'`);
        }
        out[key] = String(raw);
        break;
      default: out[key] = String(raw);
    }
  }
  return out;
}

/** Filters and thin formats take the limits of the child they pass requests to. */
function inheritLimits(node: BlockNode): void {
  const below = node.filteredChild?.node;
  if (below) node.limits = { ...below.limits };
  node.driver.refreshLimits?.(node);
}

/** A relative backing name is relative to the directory of the image that names it. */
export function resolveBackingFilename(imageFilename: string, backing: string): string {
  if (backing.startsWith('/') || /^[a-z][a-z0-9+.-]*:/i.test(backing) || imageFilename.startsWith('json:')) return backing;
  const slash = imageFilename.lastIndexOf('/');
  return slash < 0 ? backing : imageFilename.slice(0, slash + 1) + backing;
}
