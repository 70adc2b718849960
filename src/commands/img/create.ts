/**
 * `blkio img create [-q] [-f fmt] [-b backing [-F backing_fmt]] [-u] [-o options] filename [size]`
 *
 * The generic part of image creation (QEMU's bdrv_img_create): the option list of the format
 * driver followed by the protocol's, `-o` parsing and validation, the size (or the backing
 * file's), backing checks, the `Formatting ...` line, creating the file and opening it as a
 * protocol node, then the format driver's `create` on that node.
 */
import { open as openFile, rm, stat } from 'node:fs/promises';
import { BlkioError, errnoError, toBlkioError } from '../../errors.js';
import { roundUp } from '../../arithmetic.js';
import type { BlockDriver, CreateOptionSpec, CreateRequest } from '../../block/driver.js';
import { BdrvChild } from '../../block/child.js';
import { ROLE_IMAGE } from '../../block/driver.js';
import { attachChild, resolveBackingFilename, type BlockLayer } from '../../block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE } from '../../block/permissions.js';
import { hasHelpOption, parseBool, parseNumberExact, parseQemuOpts, parseSizeOptionExact } from '../../options/qemuopts.js';
import { parseSizeBigInt } from '../../options/size.js';
import type { WarningSink } from '../../options/types.js';
import { PROGRAM } from '../../cli/run.js';
import { allDrivers } from '../../drivers/index.js';
import { fileDriver } from '../../drivers/file.js';
import {
  appendOptionList, ExitStatus, UsageError, imgCvtnumExact, reportWarning, runSubcommand, withLayer, writeErr, writeOut,
} from './common.js';
import { parseImgArgs } from './options.js';

const UINT64_MAX = 2n ** 64n - 1n;

/** A value given for a create option: the typed value for the driver and the text to print. */
interface CreateValue {
  value: string | number | boolean;
  printed: string;
  /** The text given. */
  text: string;
  /** A number or size exactly, as QemuOpts keeps it (uint64). */
  exact?: bigint;
}

export type CreateValues = Map<string, CreateValue>;

/** The format's options followed by those of the protocol it does not declare itself. */
export function mergeCreateOptions(...lists: ReadonlyArray<readonly CreateOptionSpec[]>): CreateOptionSpec[] {
  const merged: CreateOptionSpec[] = [];
  for (const list of lists) for (const spec of list) if (!merged.some((m) => m.name === spec.name)) merged.push(spec);
  return merged;
}

/**
 * Set one option the way qemu_opt_set does: unknown names and malformed values fail. Numbers
 * print as signed 64-bit values (a wrapped negative input shows as typed), strings with their
 * commas doubled.
 */
export function setCreateOption(
  values: CreateValues, specs: readonly CreateOptionSpec[], name: string, text: string, warn?: WarningSink,
): void {
  const spec = specs.find((s) => s.name === name);
  if (!spec) throw new BlkioError('EINVAL', `Invalid parameter '${name}'`);
  let value: string | number | boolean;
  let exact: bigint | undefined;
  switch (spec.type) {
    case 'bool': value = parseBool(name, text); break;
    case 'number': exact = parseNumberExact(name, text); value = Number(exact); break;
    case 'size': exact = parseSizeOptionExact(name, text, 'qemuopts', warn); value = Number(exact); break;
    default: value = text;
  }
  const printed = exact !== undefined ? BigInt.asIntN(64, exact).toString() : spec.type === 'string' ? text.replaceAll(',', ',,') : text;
  values.delete(name);
  values.set(name, { value, printed, text, exact });
}

/** `-o` options: a hex size with a suffix is warned about as it is parsed. */
export function parseCreateOptions(text: string | undefined, specs: readonly CreateOptionSpec[]): CreateValues {
  const values: CreateValues = new Map();
  if (text !== undefined) for (const [key, value] of parseQemuOpts(text)) setCreateOption(values, specs, key, value, reportWarning);
  return values;
}

/**
 * QEMU's creation reads the size options once more from their text (the protocol those the
 * format hands on, then the format its own, size first), warning again about hex suffixes.
 */
function rereadSizeOptions(values: CreateValues, specs: readonly CreateOptionSpec[], driver: BlockDriver<any>): void {
  const own = (driver.createOptions ?? []).map((s) => s.name).filter((name) => name !== 'size');
  const names = [...values.keys()].filter((name) => !own.includes(name)).concat(own);
  for (const name of names) {
    const v = values.get(name);
    if (v && specs.find((s) => s.name === name)?.type === 'size') parseSizeBigInt(v.text, 'B', reportWarning);
  }
}

/** `k=v k=v ...` in the option list's order: what was set, or else the option's default. */
export function formatCreateOptions(values: CreateValues, specs: readonly CreateOptionSpec[]): string {
  const parts: string[] = [];
  for (const spec of specs) {
    const set = values.get(spec.name);
    if (set) parts.push(`${spec.name}=${set.printed}`);
    else if (spec.default !== undefined) parts.push(`${spec.name}=${typeof spec.default === 'boolean' ? (spec.default ? 'on' : 'off') : spec.default}`);
  }
  return parts.join(' ');
}

const TYPE_NAMES: Record<CreateOptionSpec['type'], string> = {
  string: 'str', bool: 'bool (on/off)', number: 'num', size: 'size',
};

/** qemu_opts_print_help: sorted by name, descriptions aligned at column 24. */
export function formatOptionHelp(specs: readonly CreateOptionSpec[]): string {
  return [...specs]
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((s) => `  ${s.name}=<${TYPE_NAMES[s.type]}>`.padEnd(24) + ` - ${s.help}\n`)
    .join('');
}

/** The protocol a filename names (`null-co://`, `file:x`), else `file`; QEMU's bdrv_find_protocol. */
export function findProtocol(filename: string): BlockDriver<any> {
  const stop = filename.search(/[:/]/);
  if (stop < 0 || filename[stop] !== ':') return fileDriver;
  const prefix = filename.slice(0, stop);
  const driver = allDrivers.find((d) => d.kind !== 'format' && (d.protocolPrefix === prefix || d.otherProtocolPrefixes?.includes(prefix)));
  if (driver) return driver;
  throw new BlkioError('EINVAL', `Unknown protocol '${prefix}'`);
}

/** The option list `create -o help` shows (format only, or format plus the filename's protocol). */
export function printOptionHelp(layer: BlockLayer, format: string, filename: string | undefined): number {
  const driver = layer.driver(format);
  if (!driver) throw new BlkioError('EINVAL', `Unknown file format '${format}'`);
  if (!driver.createOptions) throw new BlkioError('ENOTSUP', `Format driver '${format}' does not support image creation`);
  let specs: readonly CreateOptionSpec[] = driver.createOptions;
  if (filename !== undefined) {
    const protocol = findProtocol(filename);
    if (!protocol.createOptions) throw new BlkioError('ENOTSUP', `Protocol driver '${protocol.name}' does not support image creation`);
    specs = mergeCreateOptions(specs, protocol.createOptions);
  }
  writeOut(filename !== undefined ? 'Supported options:\n' : `Supported ${format} options:\n`);
  writeOut(formatOptionHelp(specs));
  if (filename === undefined) {
    writeOut('\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n');
  }
  return 0;
}

/** The format and protocol drivers that create `filename`, and their joint option list. */
export function creationDrivers(layer: BlockLayer, format: string, filename: string) {
  const driver = layer.driver(format);
  if (!driver) throw new BlkioError('EINVAL', `Unknown file format '${format}'`);
  const protocol = findProtocol(filename);
  if (!driver.createOptions) throw new BlkioError('ENOTSUP', `Format driver '${format}' does not support image creation`);
  if (!protocol.createOptions) throw new BlkioError('ENOTSUP', `Protocol driver '${protocol.name}' does not support image creation`);
  return { driver, protocol, specs: mergeCreateOptions(driver.createOptions, protocol.createOptions) };
}

/** Typed values for a driver's `create`. */
export function createRequestOptions(values: CreateValues): Record<string, string | number | boolean> {
  const options: Record<string, string | number | boolean> = {};
  for (const [name, v] of values) options[name] = v.value;
  return options;
}

export interface ImageCreateRequest {
  filename: string;
  format: string;
  backingFile?: string;
  backingFormat?: string;
  /** Joined `-o` strings. */
  options?: string;
  /** Size from the command line; undefined when none was given. */
  size?: number | bigint;
  /** `-u`: do not open the backing file (the size must then be given). */
  noBackingOpen?: boolean;
  quiet?: boolean;
}

/**
 * bdrv_img_create: validate, print `Formatting ...`, create. Errors come back as BlkioErrors
 * for the caller to prefix with the filename; the backing-format hint is printed here because
 * QEMU ends it without a newline.
 */
export async function createImage(layer: BlockLayer, req: ImageCreateRequest): Promise<void> {
  const { driver, protocol, specs } = creationDrivers(layer, req.format, req.filename);
  const values = parseCreateOptions(req.options, specs);

  if (values.has('size')) {
    if (req.size !== undefined) throw new BlkioError('EINVAL', 'The image size must be specified only once');
  } else if (req.size !== undefined) {
    setCreateOption(values, specs, 'size', String(req.size));
  }
  if (req.backingFile !== undefined) {
    if (!specs.some((s) => s.name === 'backing_file')) throw new BlkioError('ENOTSUP', `Backing file not supported for file format '${req.format}'`);
    setCreateOption(values, specs, 'backing_file', req.backingFile);
  }
  if (req.backingFormat !== undefined) {
    if (!specs.some((s) => s.name === 'backing_fmt')) throw new BlkioError('ENOTSUP', `Backing file format not supported for file format '${req.format}'`);
    setCreateOption(values, specs, 'backing_fmt', req.backingFormat);
  }
  const backingFile = values.get('backing_file')?.value as string | undefined;
  const backingFormat = values.get('backing_fmt')?.value as string | undefined;
  if (backingFile !== undefined) {
    if (backingFile === req.filename) throw new BlkioError('EINVAL', 'Error: Trying to create an image with the same filename as the backing file');
    if (backingFile === '') throw new BlkioError('EINVAL', 'Expected backing file name, got empty string');
  }

  // QEMU's "no size" is (uint64_t)-1, whoever gives it.
  if (values.get('size')?.exact === UINT64_MAX) values.delete('size');
  let size = values.get('size')?.value as number | undefined;
  if (backingFile !== undefined && !req.noBackingOpen) {
    const backingSize = await probeBacking(layer, req.filename, backingFile, backingFormat);
    if (size === undefined) {
      size = backingSize;
      setCreateOption(values, specs, 'size', String(size));
    }
  } else if (backingFile !== undefined && backingFormat === undefined) {
    throw new BlkioError('EINVAL', 'Backing file specified without backing format');
  }
  if (size === undefined) throw new BlkioError('EINVAL', 'Image creation needs a size parameter');

  if (!req.quiet) writeOut(`Formatting '${req.filename}', fmt=${req.format} ${formatCreateOptions(values, specs)}\n`);
  rereadSizeOptions(values, specs, driver);

  try {
    const options = createRequestOptions(values);
    await createImageFile(layer, driver, protocol, { filename: req.filename, size: roundUp(size, 512), options });
  } catch (e) {
    if (e instanceof BlkioError && e.code === 'EFBIG') {
      const clusterSize = values.get('cluster_size')?.value ?? specs.find((s) => s.name === 'cluster_size')?.default;
      const hint = clusterSize ? ' (try using a larger cluster size)' : '';
      throw new BlkioError('EFBIG', `The image size is too large for file format '${req.format}'${hint}`);
    }
    throw e;
  }
}

/** Open the backing file (read-only, shared, no I/O) to check it and learn its size. */
async function probeBacking(layer: BlockLayer, filename: string, backingFile: string, backingFormat: string | undefined): Promise<number> {
  const full = resolveBackingFilename(filename, backingFile);
  const options: Record<string, string> = { 'read-only': 'on', 'force-share': 'on' };
  if (backingFormat !== undefined) options.driver = backingFormat;
  let node;
  try {
    // Without I/O, as QEMU: an encrypted backing file opens without its key.
    node = await layer.openNode(full, options, { protocol: false, inherited: {}, withoutIo: true });
  } catch (e) {
    const err = toBlkioError(e);
    throw new BlkioError(err.code, err.message, [...err.hints, 'Could not open backing image.']);
  }
  try {
    if (backingFormat === undefined) {
      writeErr(`${PROGRAM}: ${filename}: Backing file specified without backing format\nDetected format of ${node.driver.name}.`);
      throw new ExitStatus(1);
    }
    return node.getLength();
  } finally {
    await layer.closeNode(node);
  }
}

/**
 * Create the host file empty (the `file` protocol's creation), open it as a protocol node, and
 * let the format driver lay out the image on it. A protocol named as the format (`-f file`)
 * is sized the way raw passes creation through to its file.
 */
export async function createImageFile(
  layer: BlockLayer, driver: BlockDriver<any>, protocol: BlockDriver<any>, request: CreateRequest,
): Promise<void> {
  if (protocol.name !== 'file' && !protocol.create) throw new BlkioError('ENOTSUP', `Protocol driver '${protocol.name}' does not support image creation`);
  const creator = driver.kind === 'protocol' ? layer.driver('raw')! : driver;
  creator.checkCreateOptions?.(request);
  const forProtocol = creator.name === 'raw' ? request : protocolCreateRequest(creator, request);
  protocol.checkCreateOptions?.(forProtocol);
  if (protocol.name !== 'file') {
    await withExistingNode(layer, protocol, request, creator);
    return;
  }
  await withEmptyFile(layer, request.filename, creator.removesFailedImage ?? false, async (edge) => {
    // raw's creation is the protocol's own; other formats first make the file as QEMU's
    // bdrv_create_file does, which refuses a preallocation mode the protocol lacks (metadata).
    // (A device, which a path may name, is taken as it is.)
    if (creator.name !== 'raw' && edge.node.driver.create) await edge.create(forProtocol);
    await creator.create!(edge, {
      ...request,
      // As QEMU does, a further file whose image could not be made is not left behind.
      withNewFile: (filename, use) => withEmptyFile(layer, filename, true, use),
    });
  });
}

/**
 * What a format leaves to the protocol's creation, as QEMU's format drivers hand it on: the
 * options the format does not take itself (a vpc image's `preallocation` is the file's), and
 * no size, which the format took.
 */
function protocolCreateRequest(creator: BlockDriver<any>, request: CreateRequest): CreateRequest {
  const own = new Set([...(creator.createOptions ?? []).map((option) => option.name), ...(creator.takesProtocolCreateOptions ?? [])]);
  const options = Object.fromEntries(Object.entries(request.options).filter(([name]) => !own.has(name)));
  return { filename: request.filename, size: 0, options };
}

/**
 * Creation on a protocol whose images exist already (QEMU's bdrv_co_create_opts_simple, as
 * NBD's): the node is opened and its driver's `create` checks and prepares it; a format then
 * lays out its image there (raw's creation is the protocol's alone).
 */
async function withExistingNode(layer: BlockLayer, protocol: BlockDriver<any>, request: CreateRequest, creator: BlockDriver<any>): Promise<void> {
  const node = await layer.openNode(request.filename, {}, { protocol: true, inherited: {} }).catch((e: unknown) => {
    throw toBlkioError(e).prepend(`Protocol driver '${protocol.name}' does not support image creation, and opening the image failed: `);
  });
  const edge = new BdrvChild({ describe: () => 'image creation' }, 'file', ROLE_IMAGE, node);
  try {
    attachChild(edge, PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL);
    await edge.create(request);
    if (creator.name !== 'raw') await creator.create!(edge, request);
    await edge.flush();
  } finally {
    layer.releaseEdge(edge);
    await layer.closeNode(node);
  }
}

/**
 * Create (or empty) a host file and run `use` with it opened as a writable protocol node;
 * `removeOnFailure`: delete the file again if `use` fails.
 */
async function withEmptyFile(
  layer: BlockLayer, filename: string, removeOnFailure: boolean, use: (file: BdrvChild) => Promise<void>,
): Promise<void> {
  const path = filename.startsWith('file:') ? filename.slice(5) : filename;
  try {
    // Created here if missing; emptied only once its locks are ours (an image in use stays intact).
    const handle = await openFile(path, 'a');
    await handle.close();
  } catch (e) {
    throw errnoError(`Could not create '${path}'`, e);
  }
  const node = await layer.openNode(filename, { 'cache.direct': 'off', 'cache.no-flush': 'off' }, { protocol: true, inherited: {} });
  const edge = new BdrvChild({ describe: () => 'image creation' }, 'file', ROLE_IMAGE, node);
  let failed = false;
  let locked = false;
  try {
    attachChild(edge, PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL);
    locked = true;
    await edge.truncate(0, false);
    await use(edge);
    await edge.flush();
  } catch (e) {
    failed = true;
    throw e;
  } finally {
    layer.releaseEdge(edge);
    await layer.closeNode(node);
    // Only a regular file is removed, as QEMU's file driver does (never a device or what a link leads to).
    if (failed && locked && removeOnFailure && (await stat(path).catch(() => undefined))?.isFile()) await rm(path, { force: true }).catch(() => {});
  }
}

/** The subcommand. */
export function imgCreate(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    let backingFile: string | undefined;
    let backingFormat: string | undefined;
    let optionText: string | undefined;
    let noBackingOpen = false;
    const { format = 'raw', quiet, operands, objects } = parseImgArgs('create', argv, {
      short: ':F:b:f:ho:qu',
      own: (item) => {
        switch (item.key) {
          case 'F': backingFormat = item.value; return true;
          case 'b': backingFile = item.value; return true;
          case 'o': optionText = appendOptionList(optionText, item.value); return true;
          case 'u': noBackingOpen = true; return true;
          default: return false;
        }
      },
    });
    const filename = operands[0];
    return withLayer(objects, async (layer) => {
      if (optionText !== undefined && hasHelpOption(optionText)) return printOptionHelp(layer, format, filename);
      if (filename === undefined) throw new UsageError('Expecting image file name');
      const size = operands.length > 1 ? imgCvtnumExact('image size', operands[1]) : undefined;
      if (operands.length > 2) throw new UsageError(`Unexpected argument: ${operands[2]}`);
      try {
        await createImage(layer, { filename, format, backingFile, backingFormat, options: optionText, size, noBackingOpen, quiet });
      } catch (e) {
        throw e instanceof BlkioError ? e.prepend(`${filename}: `) : e;
      }
      return 0;
    });
  });
}
