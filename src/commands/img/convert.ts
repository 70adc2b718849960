/**
 * `blkio img convert [-f fmt] [-O out_fmt] [-o opts] [-B backing [-F fmt]] [-c] [-n] [-S sparse]
 *   [-W] [-m N] [-p|--progress=json] [-q] [-t cache] [-T src_cache] [--target-is-zero]
 *   [--image-opts] [--target-image-opts] [-U] src... dst`
 *
 * The sources are concatenated. Their block status splits the work into data, zero and
 * "leave to the backing file" pieces (in sectors, as qemu-img counts); data is read and
 * written with up to `-m` requests in flight, writes in order unless -W. Data pieces are
 * scanned for runs of zero sectors of at least the sparse size, which are skipped on a
 * zero-initialised target or written as zeroes.
 */
import { BlkioError, toBlkioError } from '../../errors.js';
import { addBitmap, mergeBitmap, removeBitmap } from '../../block/node-bitmaps.js';
import type { BlockBackend } from '../../block/backend.js';
import type { BlockLayer } from '../../block/graph.js';
import type { BlockNode } from '../../block/node.js';
import { REQUEST_MAX_BYTES, REQ_MAY_UNMAP, STATUS_DATA, STATUS_ZERO } from '../../block/flags.js';
import { blockStatusAbove, chainNext, isZeroBuffer, nodeInfo } from '../../block/io.js';
import { isCacheMode } from '../../cli/open-image.js';
import { Progress, parseProgressMode } from '../../cli/progress.js';
import { cancelOnSigint, interruptedMessage } from '../../cli/interrupt.js';
import { tierForCopyLoop } from '../../cli/tiering.js';
import { hasHelpOption } from '../../options/qemuopts.js';
import type { ObjectRegistry } from '../../block/objects.js';
import {
  appendOptionList, backingLayer, checkCacheMode, ExitStatus, IMG_COMMAND, imgCvtnum, openImg, reportError, reportWarning, runSubcommand, skipFilters, withLayer,
} from './common.js';
import { FORCE_SHARE_OPTION, IMAGE_OPTS_OPTION, parseImgArgs, type SharedImgOptions } from './options.js';
import {
  createImageFile, createRequestOptions, creationDrivers, parseCreateOptions, printOptionHelp, setCreateOption,
} from './create.js';
import { CONVERT_AHEAD_MS, RateLimit } from '../../jobs/rate-limit.js';
import { loadSnapshotParam, parseSnapshotParam, type SnapshotParam } from './snapshot.js';
import { ioBuffer, sectorRunEnd } from '../../io-buffers.js';

const SECTOR = 512;
const MAX_COROUTINES = 16;
/** Largest buffer: 16 MiB; the default is 2 MiB. */
const MAX_BUF_SECTORS = 32768;
const DEFAULT_BUF_SECTORS = 4096;
const REQUEST_MAX_SECTORS = Math.floor(REQUEST_MAX_BYTES / SECTOR);

type PieceStatus = 'data' | 'zero' | 'backing';

interface Source {
  blk: BlockBackend;
  name: string;
  /** First sector of this source in the concatenation. */
  start: number;
  sectors: number;
}

interface ConvertState {
  sources: Source[];
  totalSectors: number;
  target: BlockBackend;
  targetHasBacking: boolean;
  /** Sectors of the target's backing file, or -1 when unknown / not needed. */
  targetBackingSectors: number;
  /** Sparse threshold in sectors (0: write everything). */
  minSparse: number;
  alignment: number;
  bufSectors: number;
  compressed: boolean;
  clusterSectors: number;
  hasZeroInit: boolean;
  /** `--salvage`: unreadable sectors become zeroes, unknown block status counts as data. */
  salvage: boolean;
  quiet: boolean;
  inOrder: boolean;
  coroutines: number;
  /** `-r`: target writes keep to this many bytes per second. */
  rateLimit?: RateLimit;
  /**
   * Aborted by the first Ctrl-C (also one during the target's creation): no more pieces are
   * handed out, the ones in flight finish and the target is closed (metadata written), so it
   * stays consistent. A second Ctrl-C exits at once.
   */
  interrupt: AbortSignal;
  /** The status cached for [.., nextStatusSector). */
  status: PieceStatus;
  nextStatusSector: number;
}

/** Options as the command line gave them. */
interface ConvertArgs extends SharedImgOptions {
  outFormat?: string;
  backing?: string;
  backingFormat?: string;
  options?: string;
  compressed: boolean;
  skipCreate: boolean;
  minSparse: number;
  explicitSparse: boolean;
  coroutines: number;
  inOrder: boolean;
  progress?: string;
  showProgress: boolean;
  cache: string;
  srcCache: string;
  targetIsZero: boolean;
  targetImageOpts: boolean;
  copyRange: boolean;
  salvage: boolean;
  /** `-r`: bytes per second (0: unlimited). */
  rateLimit: number;
  /** -l: read this internal snapshot of the (only) source. */
  snapshot?: SnapshotParam;
  /** `--bitmaps`: copy the source's persistent bitmaps; `--skip-broken-bitmaps`: all but inconsistent ones. */
  bitmaps: boolean;
  skipBrokenBitmaps: boolean;
}

function parseConvertArgs(argv: string[]): { args: ConvertArgs; operands: string[]; objects: ObjectRegistry } {
  const args: Omit<ConvertArgs, keyof SharedImgOptions> = {
    compressed: false, skipCreate: false, minSparse: 8, explicitSparse: false, coroutines: 8, inOrder: true,
    showProgress: false, cache: 'unsafe', srcCache: 'writeback', targetIsZero: false,
    targetImageOpts: false, copyRange: false, salvage: false, rateLimit: 0, bitmaps: false, skipBrokenBitmaps: false,
  };
  const { operands, objects, ...shared } = parseImgArgs('convert', argv, {
    short: ':hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:',
    long: [
      IMAGE_OPTS_OPTION,
      { name: 'target-image-opts', hasArg: false, key: 'target-image-opts' },
      { name: 'target-is-zero', hasArg: false, key: 'target-is-zero' },
      { name: 'salvage', hasArg: false, key: 'salvage' },
      { name: 'bitmaps', hasArg: false, key: 'bitmaps' },
      { name: 'skip-broken-bitmaps', hasArg: false, key: 'skip-broken-bitmaps' },
      FORCE_SHARE_OPTION,
      { name: 'progress', hasArg: true, key: 'progress' },
    ],
    own: (item) => {
      switch (item.key) {
        case 'O': args.outFormat = item.value; break;
        case 'B': args.backing = item.value; break;
        case 'C': args.copyRange = true; break;
        case 'c': args.compressed = true; break;
        case 'F': args.backingFormat = item.value; break;
        case 'o': args.options = appendOptionList(args.options, item.value); break;
        case 'l': args.snapshot = parseSnapshotParam(item.value); break;
        case 'S': {
          const bytes = imgCvtnum('buffer size for sparse output', item.value);
          if (bytes % SECTOR !== 0 || bytes / SECTOR > MAX_BUF_SECTORS) {
            throw new BlkioError('EINVAL', `Invalid buffer size for sparse output specified. Valid sizes are multiples of ${SECTOR} up to ${MAX_BUF_SECTORS * SECTOR}. Select 0 to disable sparse detection (fully allocates output).`);
          }
          args.minSparse = bytes / SECTOR;
          args.explicitSparse = true;
          break;
        }
        case 'p': args.showProgress = true; break;
        case 'progress': args.progress = item.value; break;
        case 't': args.cache = item.value; break;
        case 'T': args.srcCache = item.value; break;
        case 'n': args.skipCreate = true; break;
        case 'm': {
          const n = /^[+-]?(0x[0-9a-f]+|[0-9]+)$/i.test(item.value.trim()) ? Number(item.value) : NaN;
          if (!Number.isInteger(n) || n < 1 || n > MAX_COROUTINES) {
            throw new BlkioError('EINVAL', `Invalid number of coroutines. Allowed number of coroutines is between 1 and ${MAX_COROUTINES}`);
          }
          args.coroutines = n;
          break;
        }
        case 'W': args.inOrder = false; break;
        case 'r': args.rateLimit = imgCvtnum('rate limit', item.value); break;
        case 'target-image-opts': args.targetImageOpts = true; break;
        case 'target-is-zero': args.targetIsZero = true; break;
        case 'salvage': args.salvage = true; break;
        case 'bitmaps': args.bitmaps = true; break;
        case 'skip-broken-bitmaps': args.skipBrokenBitmaps = true; break;
        default: return false;
      }
      return true;
    },
  });
  return { args: { ...args, ...shared }, operands, objects };
}

export function imgConvert(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    const { args, operands, objects } = parseConvertArgs(argv);
    if (args.outFormat === undefined && !args.targetImageOpts) args.outFormat = 'raw';
    const fail = (message: string): BlkioError => new BlkioError('EINVAL', message);
    if (args.skipBrokenBitmaps && !args.bitmaps) throw fail('Use of --skip-broken-bitmaps requires --bitmaps');
    if (args.compressed && args.copyRange) throw fail('Cannot enable copy offloading when -c is used');
    if (args.explicitSparse && args.copyRange) throw fail('Cannot enable copy offloading when -S is used');
    if (args.copyRange && args.salvage) throw fail('Cannot use copy offloading in salvaging mode');
    if (args.targetImageOpts && !args.skipCreate) throw fail('--target-image-opts requires use of -n flag');
    if (args.skipCreate && args.options !== undefined) throw fail('-o has no effect when skipping image creation');
    if (args.targetIsZero && !args.skipCreate) throw fail('--target-is-zero requires use of -n flag');
    const outFilename = operands.length >= 2 ? operands[operands.length - 1] : undefined;
    const sigint = cancelOnSigint();
    return withLayer(objects, async (layer) => {
      if (args.options !== undefined && hasHelpOption(args.options)) {
        if (args.outFormat === undefined) throw fail('Option help requires a format be specified');
        return printOptionHelp(layer, args.outFormat, outFilename);
      }
      if (outFilename === undefined) throw fail('Must specify image file name');
      if (!isCacheMode(args.srcCache)) throw fail(`Invalid source cache option: ${args.srcCache}`);
      const progress = new Progress(parseProgressMode(args.progress, args.showProgress, args.quiet));
      tierForCopyLoop();
      try {
        progress.update(0, 0);
        await convert(layer, args, operands.slice(0, -1), outFilename, progress, sigint.signal);
        progress.finish({ redrawFull: true });
      } finally {
        progress.dispose();
      }
      return 0;
    }).finally(sigint.stop);
  });
}

async function convert(
  layer: BlockLayer, args: ConvertArgs, sourceNames: string[], outFilename: string, progress: Progress, interrupt: AbortSignal,
): Promise<void> {
  const sources: Source[] = [];
  let totalSectors = 0;
  for (const name of sourceNames) {
    const blk = await openImg(layer, {
      filename: name, format: args.format, imageOpts: args.imageOpts, readOnly: true, forceShare: args.forceShare, cache: args.srcCache,
      noShare: true,
    });
    let length: number;
    try {
      length = blk.getLength();
    } catch (e) {
      throw new BlkioError(toBlkioError(e).code, `Could not get size of ${name}: ${toBlkioError(e).strerror}`);
    }
    const sectors = Math.ceil(length / SECTOR);
    sources.push({ blk, name, start: totalSectors, sectors });
    totalSectors += sectors;
  }
  if (args.snapshot) {
    if ('idOrName' in args.snapshot && sources.length > 1) throw new BlkioError('EINVAL', 'No support for concatenating multiple snapshot');
    await loadSnapshotParam(sources[0].blk.node, args.snapshot);
  }

  let backing = args.backing;
  // A new target opens with the key secrets it was created with (an encrypted image needs them).
  const keySecrets: Record<string, string> = {};
  if (!args.skipCreate) {
    const { driver, protocol, specs } = creationDrivers(layer, args.outFormat!, outFilename);
    const values = parseCreateOptions(args.options, specs);
    setCreateOption(values, specs, 'size', String(totalSectors * SECTOR));
    if (args.backing !== undefined) {
      if (!specs.some((s) => s.name === 'backing_file')) throw new BlkioError('ENOTSUP', `Backing file not supported for file format '${args.outFormat}'`);
      setCreateOption(values, specs, 'backing_file', args.backing);
    }
    if (args.backingFormat !== undefined) {
      if (!specs.some((s) => s.name === 'backing_fmt')) throw new BlkioError('ENOTSUP', `Backing file format not supported for file format '${args.outFormat}'`);
      setCreateOption(values, specs, 'backing_fmt', args.backingFormat);
    }
    backing = values.get('backing_file')?.value as string | undefined;
    checkBackingUse(sources.length, backing);
    if (backing !== undefined && !values.has('backing_fmt')) throw new BlkioError('EINVAL', 'Use of backing file requires explicit backing format');
    if (args.compressed) {
      if (!driver.writeCompressed) throw new BlkioError('ENOTSUP', 'Compression not supported for this file format');
      if (values.get('encryption')?.value === true || values.has('encrypt.format')) {
        throw new BlkioError('EINVAL', 'Compression and encryption not supported at the same time');
      }
      const prealloc = values.get('preallocation')?.value;
      if (prealloc !== undefined && prealloc !== 'off') throw new BlkioError('EINVAL', 'Compression and preallocation not supported at the same time');
    }
    if (args.bitmaps) checkSourceBitmaps(sources, args.skipBrokenBitmaps);
    for (const [name, option] of values) {
      if (name.endsWith('key-secret')) keySecrets[name] = String(option.value);
    }
    try {
      await createImageFile(layer, driver, protocol, { filename: outFilename, size: totalSectors * SECTOR, options: createRequestOptions(values) });
    } catch (e) {
      throw e instanceof BlkioError ? e.prepend(`${outFilename}: error while converting ${args.outFormat}: `) : e;
    }
  } else {
    if (args.targetIsZero && backing !== undefined) {
      // qemu-img 7.2 says so, leaves the target alone, and still exits 0.
      reportError(new BlkioError('EINVAL', 'Cannot use --target-is-zero when the destination image has a backing file'));
      return;
    }
    checkBackingUse(sources.length, backing);
    if (args.bitmaps) checkSourceBitmaps(sources, args.skipBrokenBitmaps);
  }

  checkCacheMode(args.cache);
  const target = await openImg(layer, {
    filename: outFilename, format: args.outFormat, imageOpts: args.targetImageOpts, cache: args.cache,
    unmap: args.minSparse > 0, extraOptions: keySecrets,
  });
  const out = skipFilters(target.node);
  if (args.bitmaps && !target.node.driver.supportsPersistentDirtyBitmaps?.(target.node)) {
    throw new BlkioError('ENOTSUP', `Format driver '${target.node.driver.name}' does not support bitmaps`);
  }
  if (args.compressed && !out.driver.writeCompressed) throw new BlkioError('ENOTSUP', 'Compression not supported for this file format');
  if (args.skipCreate && Math.ceil(target.getLength() / SECTOR) < totalSectors) throw new BlkioError('EINVAL', 'output file is smaller than input file');

  const targetHasBacking = backing !== undefined;
  const targetBacking = targetHasBacking && !args.skipCreate ? backingLayer(out) : undefined;
  const outInfo = nodeInfo(out);
  const clusterSize = outInfo.clusterSize ?? 0;
  const minSparse = args.minSparse;
  const state: ConvertState = {
    sources, totalSectors, target, targetHasBacking,
    targetBackingSectors: targetBacking ? Math.ceil(targetBacking.getLength() / SECTOR) : -1,
    minSparse,
    alignment: Math.max(pow2floor(minSparse), Math.ceil(out.limits.requestAlignment / SECTOR)),
    bufSectors: DEFAULT_BUF_SECTORS,
    // A format that stores only compressed data (streamOptimized vmdk) is written compressed.
    compressed: args.compressed || outInfo.needsCompressedWrites === true,
    clusterSectors: clusterSize / SECTOR,
    hasZeroInit: args.targetIsZero || (!args.skipCreate && minSparse > 0 && !targetHasBacking),
    salvage: args.salvage,
    quiet: args.quiet,
    inOrder: args.inOrder,
    coroutines: args.coroutines,
    rateLimit: args.rateLimit ? new RateLimit(args.rateLimit, { aheadMs: CONVERT_AHEAD_MS }) : undefined,
    interrupt,
    status: 'data',
    nextStatusSector: 0,
  };
  if (state.compressed) {
    if (state.clusterSectors <= 0 || state.clusterSectors > state.bufSectors) throw new BlkioError('EINVAL', 'invalid cluster size');
    state.bufSectors = state.clusterSectors;
  }
  await doCopy(state, progress);
  // An empty compressed write tells the target that the compressed stream ends (qcow2 pads its file to a sector).
  // A target that refuses it (qcow) fails the conversion with no message, as qemu-img does.
  if (state.compressed) {
    await target.writeCompressed(0, 0, new Uint8Array(0)).catch((e: unknown) => {
      throw e instanceof BlkioError ? new ExitStatus(1) : e;
    });
  }
  if (args.bitmaps) await copyBitmaps(sources[0].blk.node, target.node, args.skipBrokenBitmaps);
  await target.flush();
}

/** `--bitmaps` needs one source that can hold bitmaps, and none inconsistent unless they are skipped. */
function checkSourceBitmaps(sources: readonly Source[], skipBroken: boolean): void {
  if (sources.length > 1) throw new BlkioError('EINVAL', 'Copying bitmaps only possible with single source');
  const source = sources[0].blk.node;
  if (!source.driver.supportsPersistentDirtyBitmaps?.(source)) throw new BlkioError('ENOTSUP', 'Source lacks bitmap support');
  const broken = source.dirtyBitmaps.find((b) => b.persistent && b.inconsistent);
  if (broken && !skipBroken) {
    throw new BlkioError('EINVAL', `Cannot copy inconsistent bitmap '${broken.name}'`,
      [`Try --skip-broken-bitmaps, or use '${IMG_COMMAND} bitmap --remove' to delete it`]);
  }
}

/** Each persistent bitmap of the source made anew in the target (same granularity and state) and filled from it. */
async function copyBitmaps(source: BlockNode, target: BlockNode, skipBroken: boolean): Promise<void> {
  for (const bitmap of source.dirtyBitmaps.filter((b) => b.persistent)) {
    const name = bitmap.name;
    if (skipBroken && bitmap.inconsistent) {
      reportWarning(`warning: Skipping inconsistent bitmap '${name}'`);
      continue;
    }
    try {
      await addBitmap(target, name, { granularity: bitmap.granularity, persistent: true, disabled: !bitmap.enabled });
    } catch (e) {
      throw toBlkioError(e).prepend(`Failed to create bitmap ${name}: `);
    }
    try {
      mergeBitmap(target, name, source, name);
    } catch (e) {
      await removeBitmap(target, name).catch(() => {});
      throw toBlkioError(e).prepend(`Failed to populate bitmap ${name}: `);
    }
  }
}

function checkBackingUse(sourceCount: number, backing: string | undefined): void {
  if (sourceCount > 1 && backing !== undefined) {
    throw new BlkioError('EINVAL', 'Having a backing file for the target makes no sense when concatenating multiple input images');
  }
}

function pow2floor(n: number): number {
  return n <= 0 ? 0 : 2 ** Math.floor(Math.log2(n));
}

function sourceAt(s: ConvertState, sector: number): Source {
  let i = 0;
  while (i + 1 < s.sources.length && sector >= s.sources[i + 1].start) i++;
  return s.sources[i];
}

/** The next piece starting at `sector`: its length in sectors; its status is left in s.status. */
async function nextPiece(s: ConvertState, sector: number): Promise<number> {
  const src = sourceAt(s, sector);
  let n = Math.min(s.totalSectors - sector, REQUEST_MAX_SECTORS, src.start + src.sectors - sector);
  let postBackingZero = false;
  if (s.targetBackingSectors >= 0) {
    if (sector >= s.targetBackingSectors) postBackingZero = true;
    else if (sector + n > s.targetBackingSectors) n = s.targetBackingSectors - sector;
  }
  if (s.nextStatusSector <= sector) {
    const top = skipFilters(src.blk.node);
    // With a backing file in the target, only what the source's own layer holds is copied.
    const base = s.targetHasBacking ? chainNext(top) : undefined;
    const offset = (sector - src.start) * SECTOR;
    let r;
    try {
      r = await blockStatusAbove(top, base, offset, Math.min(n * SECTOR, src.blk.getLength() - offset));
    } catch (e) {
      const message = `error while reading block status at offset ${offset}: ${reason(e)}`;
      if (!s.salvage) throw new BlkioError('EIO', message);
      if (!s.quiet) reportWarning(`warning: ${message}`);
      r = { status: STATUS_DATA, pnum: SECTOR };
    }
    n = Math.max(1, Math.ceil(r.pnum / SECTOR));
    if (r.status & STATUS_ZERO) s.status = postBackingZero ? 'backing' : 'zero';
    else if (r.status & STATUS_DATA) s.status = 'data';
    else s.status = s.targetHasBacking ? 'backing' : 'data';
    s.nextStatusSector = sector + n;
  }
  n = Math.min(n, s.nextStatusSector - sector);
  if (s.status === 'data') n = Math.min(n, s.bufSectors);
  if (s.compressed) {
    if (n < s.clusterSectors) {
      n = Math.min(s.clusterSectors, s.totalSectors - sector);
      s.status = 'data';
    } else {
      n -= n % s.clusterSectors;
    }
  }
  return n;
}

function writesData(s: ConvertState, status: PieceStatus): boolean {
  return status === 'data' || (!s.minSparse && status === 'zero');
}

async function doCopy(s: ConvertState, progress: Progress): Promise<void> {
  let allocatedSectors = 0;
  for (let sector = 0; sector < s.totalSectors;) {
    const n = await nextPiece(s, sector);
    if (writesData(s, s.status)) allocatedSectors += n;
    sector += n;
  }
  s.nextStatusSector = 0;

  let nextSector = 0;
  let allocatedDone = 0;
  let failed = false;
  /** Taking the next piece is serialised (it shares the cached status), as are in-order writes. */
  let claimLock: Promise<unknown> = Promise.resolve();
  let previousWrite: Promise<void> = Promise.resolve();

  const claim = (): Promise<Piece | undefined> => {
    const result = claimLock.then(async (): Promise<Piece | undefined> => {
      if (failed || s.interrupt.aborted || nextSector >= s.totalSectors) return undefined;
      const sector = nextSector;
      let n = await nextPiece(s, sector);
      const status = s.status;
      if (!s.minSparse && status === 'zero') n = Math.min(n, s.bufSectors);
      nextSector = sector + n;
      let release!: () => void;
      const written = new Promise<void>((r) => (release = r));
      const turn = previousWrite;
      if (s.inOrder) previousWrite = written;
      return { sector, n, status, turn, release };
    });
    claimLock = result.catch(() => undefined);
    return result;
  };

  const worker = async (): Promise<void> => {
    const buf = ioBuffer(s.bufSectors * SECTOR);
    for (let piece = await claim(); piece; piece = await claim()) {
      const { sector, n } = piece;
      let status = piece.status;
      try {
        if (writesData(s, status)) {
          allocatedDone += n;
          progress.update(allocatedDone * SECTOR, allocatedSectors * SECTOR); // bytes, for --progress=json
        }
        const data = buf.subarray(0, n * SECTOR);
        if (status === 'data') {
          await readSectors(s, sector, n, data);
        } else if (!s.minSparse && status === 'zero') {
          status = 'data';
          data.fill(0);
        }
        if (s.inOrder) await piece.turn;
        if (!failed) await writePiece(s, sector, n, data, status);
      } catch (e) {
        failed = true;
        throw e;
      } finally {
        piece.release();
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: s.coroutines }, worker));
  const rejected = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (rejected) throw rejected.reason;
  if (s.interrupt.aborted) {
    throw new BlkioError('ECANCELED', interruptedMessage('convert', allocatedDone * SECTOR, allocatedSectors * SECTOR));
  }
}

interface Piece {
  sector: number;
  n: number;
  status: PieceStatus;
  /** Resolves when the piece before this one is written. */
  turn: Promise<void>;
  release: () => void;
}

async function readSectors(s: ConvertState, sector: number, n: number, buf: Uint8Array): Promise<void> {
  let done = 0;
  while (done < n) {
    const src = sourceAt(s, sector + done);
    const count = Math.min(n - done, src.start + src.sectors - (sector + done));
    const offset = (sector + done - src.start) * SECTOR;
    const part = buf.subarray(done * SECTOR, (done + count) * SECTOR);
    try {
      await readSource(src, offset, part);
    } catch (e) {
      if (!s.salvage) throw new BlkioError('EIO', `error while reading at byte ${sector * SECTOR}: ${reason(e)}`);
      await salvageSectors(s, src, offset, part);
    }
    done += count;
  }
}

/** The last sector of a source may be partial: read what exists, the rest is zero. */
async function readSource(src: Source, offset: number, buf: Uint8Array): Promise<void> {
  const readable = Math.min(buf.length, src.blk.getLength() - offset);
  await src.blk.read(offset, readable, buf.subarray(0, readable));
  buf.fill(0, readable);
}

/** `--salvage` after a failed read: again sector by sector; a sector that still fails reads as zeroes. */
async function salvageSectors(s: ConvertState, src: Source, offset: number, buf: Uint8Array): Promise<void> {
  for (let at = 0; at < buf.length; at += SECTOR) {
    const sector = buf.subarray(at, at + SECTOR);
    try {
      await readSource(src, offset + at, sector);
    } catch (e) {
      if (!s.quiet) reportWarning(`warning: error while reading offset ${offset + at}: ${reason(e)}`);
      sector.fill(0);
    }
  }
}

function reason(e: unknown): string {
  return e instanceof BlkioError ? e.strerror : String(e);
}

/** How many leading sectors of a data piece to write as data (0: the piece starts with a sparse run). */
function dataSectors(s: ConvertState, buf: Uint8Array, n: number, sector: number): { write: boolean; n: number } {
  if (!s.minSparse) return { write: true, n };
  if (s.compressed) return { write: !isZeroBuffer(buf.subarray(0, n * SECTOR)), n };
  const r = allocatedSectorsMin(buf, n, s.minSparse, sector, s.alignment);
  return { write: r.allocated, n: r.pnum };
}

async function writePiece(s: ConvertState, sector: number, count: number, buf: Uint8Array, status: PieceStatus): Promise<void> {
  try {
    for (let done = 0; done < count;) {
      const part = buf.subarray(done * SECTOR, count * SECTOR);
      const at = (sector + done) * SECTOR;
      let n = count - done;
      if (status === 'data') {
        const run = dataSectors(s, part, n, sector + done);
        n = run.n;
        if (run.write) {
          const bytes = part.subarray(0, n * SECTOR);
          await throttle(s, bytes.length);
          await (s.compressed ? s.target.writeCompressed(at, bytes.length, bytes) : s.target.write(at, bytes.length, bytes));
          done += n;
          continue;
        }
      }
      // Zeroes (and sparse runs of data pieces); a backing-file piece stays unallocated.
      if (status !== 'backing' && !s.hasZeroInit) {
        await throttle(s, n * SECTOR);
        await s.target.writeZeroes(at, n * SECTOR, REQ_MAY_UNMAP);
      }
      done += n;
    }
  } catch (e) {
    throw new BlkioError('EIO', `error while writing at byte ${sector * SECTOR}: ${reason(e)}`);
  }
}

/** `-r`: every target write (data or zeroes) waits until the bytes written before it keep to the rate. */
async function throttle(s: ConvertState, bytes: number): Promise<void> {
  if (!s.rateLimit) return;
  await s.rateLimit.wait(() => s.interrupt.aborted);
  s.rateLimit.account(bytes);
}

/**
 * qemu-img's is_allocated_sectors: whether the first sector has data, and how many sectors
 * share that state, with the end moved to an alignment boundary where that saves a
 * read-modify-write.
 */
export function allocatedSectors(buf: Uint8Array, n: number, sector: number, alignment: number): { allocated: boolean; pnum: number } {
  if (n <= 0) return { allocated: false, pnum: 0 };
  let isZero = sectorRunEnd(buf, 0, 1, true) === 1;
  let i = sectorRunEnd(buf, 1, n, isZero);
  if (i === n) return { allocated: !isZero, pnum: i };
  const tail = (sector + i) & (alignment - 1);
  if (tail) {
    if (isZero && i <= tail) isZero = false;
    if (!isZero) i = Math.min(i + alignment - tail, n);
    else i -= tail;
  }
  return { allocated: !isZero, pnum: i };
}

/** is_allocated_sectors_min: after data, zero runs shorter than `min` sectors count as data. */
export function allocatedSectorsMin(buf: Uint8Array, n: number, min: number, sector: number, alignment: number): { allocated: boolean; pnum: number } {
  min = Math.min(min, n);
  const first = allocatedSectors(buf, n, sector, alignment);
  if (!first.allocated) return first;
  let used = first.pnum;
  let checked = used;
  while (checked < n) {
    const r = allocatedSectors(buf.subarray(checked * SECTOR), n - checked, sector + checked, alignment);
    checked += r.pnum;
    if (r.allocated) used = checked;
    else if (r.pnum >= min) break;
  }
  return { allocated: true, pnum: used };
}
