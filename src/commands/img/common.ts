/**
 * What every `blkio img` subcommand shares: the output streams, qemu-img's error conventions
 * (usage errors with a `Try ... --help` hint, `Could not open '<name>': ` prefixes), the block
 * layer with all drivers, and opening images the way qemu-img does.
 */
import { BlkioError } from '../../errors.js';
import { BlockLayer } from '../../block/graph.js';
import { processObjectArg, type ObjectRegistry } from '../../block/objects.js';
import type { BlockBackend } from '../../block/backend.js';
import type { BlockNode } from '../../block/node.js';
import { PERM_RESIZE } from '../../block/permissions.js';
import { allDrivers } from '../../drivers/index.js';
import { isCacheMode, openImage, type ImageOpenRequest } from '../../cli/open-image.js';
import { writeStderr as writeErr, writeStdout as writeOut } from '../../cli/output.js';
import { PROGRAM } from '../../cli/run.js';
import type { FlatOptions } from '../../options/types.js';
import { isValidOptionList, parseQemuOpts, qemuOptsToDict } from '../../options/qemuopts.js';
import { parseSizeBigInt, SizeError } from '../../options/size.js';
import type { OptionItem } from './getopt.js';

/** The name the usage hint tells users to run for help. */
export const IMG_COMMAND = `${PROGRAM} img`;

/** A command-line mistake: qemu-img's error_exit (message, `Try ... --help`, exit 1). */
export class UsageError extends Error {}

/** Several error_report lines at once (each gets the program prefix). */
export class ReportLines extends Error {
  constructor(readonly lines: string[]) {
    super(lines[0]);
  }
}

/** A failure already reported to the user; carries the exit code. */
export class ExitStatus extends Error {
  constructor(readonly status: number) {
    super(`exit ${status}`);
  }
}

export { writeErr, writeOut };

/** error_report: `blkio: <message>` plus hint lines. */
export function reportError(e: unknown): void {
  if (e instanceof BlkioError) {
    writeErr(`${PROGRAM}: ${e.message}\n`);
    for (const hint of e.hints) writeErr(`${hint}\n`);
  } else if (e instanceof ReportLines) {
    for (const line of e.lines) writeErr(`${PROGRAM}: ${line}\n`);
  } else if (e instanceof UsageError) {
    writeErr(`${PROGRAM}: ${e.message}\nTry '${IMG_COMMAND} --help' for more information\n`);
  } else {
    writeErr(`${PROGRAM}: ${e instanceof Error ? e.message : String(e)}\n`);
  }
}

/** warn_report: the sink receives `warning: ...`; QEMU's probing notice carries its own `WARNING:`. */
export function reportWarning(message: string): void {
  writeErr(message.startsWith('WARNING:') ? `${message}\n` : `${PROGRAM}: ${message}\n`);
}

/** A block layer holding the objects the command line defined (`--object`). */
export function newLayer(objects?: ObjectRegistry): BlockLayer {
  const layer = new BlockLayer(allDrivers, reportWarning);
  for (const [id, object] of objects?.objects ?? []) layer.objects.set(id, object);
  return layer;
}

export function newObjectRegistry(): ObjectRegistry {
  return { objects: new Map<string, unknown>() };
}

/**
 * `--object`, acted on where qemu-img's option loop reaches it: the object is created (an
 * error ends the command, with status 1 except in compare), or the help asked for is printed
 * (status 0).
 */
export function objectOption(objects: ObjectRegistry, text: string, failureStatus = 1): void {
  let help: string | undefined;
  try {
    help = processObjectArg(objects, text);
  } catch (e) {
    reportError(e);
    throw new ExitStatus(failureStatus);
  }
  if (help === undefined) return;
  writeOut(help);
  throw new ExitStatus(0);
}

/** The default branch of every qemu-img option switch. */
export function badOption(item: OptionItem): never {
  if (item.key === ':') throw new UsageError(`missing argument for option '${item.value}'`);
  throw new UsageError(`unrecognized option '${item.value}'`);
}

export function checkCacheMode(mode: string): void {
  if (!isCacheMode(mode)) throw new BlkioError('EINVAL', `Invalid cache option: ${mode}`);
}

/** -T: the cache mode images are read with. */
export function checkSourceCacheMode(mode: string): void {
  if (!isCacheMode(mode)) throw new BlkioError('EINVAL', `Invalid source cache option: ${mode}`);
}

export type OutputFormat = 'human' | 'json';

/** --output's value; human when the option was not given. */
export function parseOutputFormat(value = 'human'): OutputFormat {
  if (value === 'human' || value === 'json') return value;
  throw new BlkioError('EINVAL', '--output must be used with human or json as argument.');
}

/** How one image argument of a subcommand is to be opened. */
export interface ImgOpenSpec {
  filename: string;
  format?: string;
  imageOpts?: boolean;
  readOnly?: boolean;
  forceShare?: boolean;
  cache?: string;
  /** Do not open the backing chain (info, rebase -u, create's size probe). */
  noBacking?: boolean;
  /** Opened to be resized (QEMU's BDRV_O_RESIZE): the resize permission is part of the open. */
  resize?: boolean;
  /** Other users may only read (convert's sources). */
  noShare?: boolean;
  /** Discards reach the file (QEMU's BDRV_O_UNMAP): commit, and convert's target unless -S 0. */
  unmap?: boolean;
  /** Opened only to be described (QEMU's BDRV_O_NO_IO, qemu-img info). */
  withoutIo?: boolean;
  extraOptions?: FlatOptions;
}

/**
 * Open an image like qemu-img's img_open: errors become `Could not open '<name>': <error>`.
 * --image-opts names the driver in the option string itself, so a format cannot come with it.
 */
export async function openImg(layer: BlockLayer, spec: ImgOpenSpec): Promise<BlockBackend> {
  if (spec.imageOpts && spec.format !== undefined) throw new BlkioError('EINVAL', '--image-opts and --format are mutually exclusive');
  const options: FlatOptions = { ...spec.extraOptions };
  if (spec.imageOpts) {
    // Parsed before the open, as in qemu-img: its errors are not "Could not open" ones.
    const pairs = parseQemuOpts(spec.filename, { impliedKey: 'file', id: 'keep', warn: (line) => layer.warn(line) });
    Object.assign(options, qemuOptsToDict(pairs));
    if (spec.forceShare && options['force-share'] !== undefined && options['force-share'] !== 'on') {
      throw new BlkioError('EINVAL', '--force-share/-U conflicts with image options');
    }
  }
  const req: ImageOpenRequest = {
    filename: spec.imageOpts ? undefined : spec.filename,
    format: spec.format,
    extraOptions: options,
    readOnly: spec.readOnly,
    forceShare: spec.forceShare,
    cache: spec.cache,
    defaultCache: 'writeback',
    discard: spec.unmap ? 'unmap' : 'ignore',
    noBacking: spec.noBacking,
    noShare: spec.noShare,
    withoutIo: spec.withoutIo,
  };
  try {
    const { blk } = await openImage(layer, req);
    if (spec.resize) blk.requirePerms(PERM_RESIZE);
    return blk;
  } catch (e) {
    throw e instanceof BlkioError ? e.prepend(`Could not open '${spec.filename}': `) : e;
  }
}

/** Run `body` on a block layer holding the command line's objects; every node it opened is closed after. */
export async function withLayer<T>(objects: ObjectRegistry | undefined, body: (layer: BlockLayer) => Promise<T>): Promise<T> {
  const layer = newLayer(objects);
  try {
    return await body(layer);
  } finally {
    await layer.closeAll();
  }
}

/** The one image name most subcommands take. */
export function oneImageName(operands: readonly string[]): string {
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  return operands[0];
}

/** `-o`: each occurrence adds to the option list given so far. */
export function appendOptionList(list: string | undefined, text: string): string {
  if (!isValidOptionList(text)) throw new BlkioError('EINVAL', `Invalid option list: ${text}`);
  return list === undefined ? text : `${list},${text}`;
}

/** The format node a user means by an image: filters above it are looked through. */
export function skipFilters(node: BlockNode): BlockNode {
  let n = node;
  // blkdebug and blkverify too (filters opened as protocols), as QEMU's bdrv_skip_filters.
  while (n.filteredChild) n = n.filteredChild.node;
  return n;
}

/** The next layer of a backing chain (filters count as part of their layer). */
export function backingLayer(node: BlockNode): BlockNode | undefined {
  const below = skipFilters(node).backing?.node;
  return below ? skipFilters(below) : undefined;
}

const INT64_MAX = 2n ** 63n - 1n;

/**
 * qemu-img's cvtnum: a size argument (`64k`, `1.5M`) between min and max, with its two
 * error wordings (bad syntax, out of range) naming the argument.
 */
export function imgCvtnum(name: string, text: string, min = 0, max = INT64_MAX): number {
  return Number(imgCvtnumExact(name, text, min, max));
}

/** imgCvtnum's value exactly, for sizes a user may give beyond 2^53. */
export function imgCvtnumExact(name: string, text: string, min = 0, max = INT64_MAX): bigint {
  let value: bigint;
  try {
    value = parseSizeBigInt(text, 'B', reportWarning);
  } catch (e) {
    if (!(e instanceof SizeError) || e.code !== 'ERANGE') {
      throw new ReportLines([
        `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for`,
        'kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.',
      ]);
    }
    value = -1n;
  }
  if (value < BigInt(min) || value > max) {
    throw new ReportLines([`Invalid ${name} specified. Must be between ${min} and ${max}.`]);
  }
  return value;
}

/** Run a subcommand body: reported failures become exit codes, anything else an error line. */
export async function runSubcommand(body: () => Promise<number>, failureStatus = 1): Promise<number> {
  try {
    return await body();
  } catch (e) {
    if (e instanceof ExitStatus) return e.status;
    reportError(e);
    return e instanceof UsageError ? 1 : failureStatus;
  }
}
