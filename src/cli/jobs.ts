/**
 * `blkio stream`, `blkio commit` and `blkio mirror`: long-running jobs from the command line.
 * Each opens the image as qemu-img would (-f, --image-opts, -t, its error texts), runs the job from src/jobs
 * with progress (-p, --progress=json, SIGUSR1), and turns the first SIGINT into a clean
 * cancel: the job stops, the images stay consistent, a message says what to rerun (exit 130).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { BlkioError } from '../errors.js';
import type { BlockBackend } from '../block/backend.js';
import { BlockLayer } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { allDrivers } from '../drivers/index.js';
import { backingImage, backingNameFrom, findBackingImage } from '../jobs/chain.js';
import { commitImage } from '../jobs/commit.js';
import { isCancelled, type JobOptions } from '../jobs/job.js';
import { mirror, type MirrorSync } from '../jobs/mirror.js';
import { stream } from '../jobs/stream.js';
import { openImg } from '../commands/img/common.js';
import { createImage } from '../commands/img/create.js';
import { cvtnum } from '../options/size.js';
import type { FlatOptions } from '../options/types.js';
import { parseProgressMode, Progress } from './progress.js';
import { writeStderr, writeStdout } from './output.js';
import { tierForCopyLoop } from './tiering.js';
import { cancelOnSigint, interruptedMessage } from './interrupt.js';
import { PROGRAM } from './run.js';

const IMAGE_OPTIONS = '[-f FMT] [--image-opts] [-t CACHE] [-r RATE] [-p | --progress=human|json]';
const USAGE = {
  stream: `Usage: ${PROGRAM} stream ${IMAGE_OPTIONS} [--base FILE | --base-node NODE] [--backing-file STR] IMAGE`,
  commit: `Usage: ${PROGRAM} commit ${IMAGE_OPTIONS} [-q] [-b BASE] [-d] IMAGE`,
  mirror: `Usage: ${PROGRAM} mirror ${IMAGE_OPTIONS} --target FILE [--target-format FMT] [--sync=full|top|none] IMAGE`,
};
type Command = keyof typeof USAGE;

const COMMON_OPTIONS = {
  format: { type: 'string', short: 'f' },
  'image-opts': { type: 'boolean' },
  cache: { type: 'string', short: 't' },
  rate: { type: 'string', short: 'r' },
  p: { type: 'boolean', short: 'p' },
  progress: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

/** Parse argv; exactly one IMAGE; usage errors as one-line messages plus the usage. */
function parse<O extends ParseArgsConfig['options']>(command: Command, argv: string[], options: O) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: { ...COMMON_OPTIONS, ...options } });
  } catch (e) {
    const err = e as Error & { code?: string };
    const option = /'([^']*)'/.exec(err.message)?.[1];
    const message = err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && option ? `unrecognized option '${option}'` : err.message;
    throw new BlkioError('EINVAL', `${message}\n${USAGE[command]}`);
  }
  if ((parsed.values as { help?: boolean }).help) return undefined;
  if (parsed.positionals.length !== 1) throw new BlkioError('EINVAL', `Expecting one image file name\n${USAGE[command]}`);
  return { values: parsed.values, image: parsed.positionals[0] };
}

interface CommonValues {
  format?: string;
  'image-opts'?: boolean;
  cache?: string;
  rate?: string;
  p?: boolean;
  progress?: string;
  q?: boolean;
}

/**
 * Run a job body with a layer, progress and SIGINT handling; the body gets the job options to
 * pass on and an `open` for the image. Returns the exit status.
 */
async function runJob(
  command: Command,
  image: string,
  values: CommonValues,
  body: (job: JobOptions, open: (extra?: FlatOptions) => Promise<BlockBackend>, layer: BlockLayer) => Promise<void>,
): Promise<number> {
  const rateLimit = values.rate === undefined ? 0 : parseRate(values.rate);
  tierForCopyLoop();
  const progress = new Progress(parseProgressMode(values.progress, values.p, values.q));
  const layer = new BlockLayer(allDrivers, (text) => writeStderr(text + '\n'));
  const sigint = cancelOnSigint();
  let done = 0;
  let total = 0;
  const job: JobOptions = {
    rateLimit,
    signal: sigint.signal,
    onProgress: (d, t) => {
      done = d;
      total = t;
      progress.update(d, t);
    },
  };
  const open = (extraOptions: FlatOptions = {}) => openImg(layer, {
    filename: image, format: values.format, imageOpts: values['image-opts'], cache: values.cache, extraOptions,
  });
  try {
    await body(job, open, layer);
    progress.finish();
    return 0;
  } catch (e) {
    if (!isCancelled(e)) throw e;
    progress.dispose();
    writeStderr(`${PROGRAM}: ${interruptedMessage(command, done, total)}\n`);
    return 130;
  } finally {
    progress.dispose();
    await layer.closeAll().finally(sigint.stop);
  }
}

/** `blkio stream [image options] [--base FILE | --base-node NODE] [--backing-file STR] IMAGE` */
export async function runStream(argv: string[]): Promise<number> {
  const args = parse('stream', argv, {
    base: { type: 'string' },
    'base-node': { type: 'string' },
    'backing-file': { type: 'string' },
  });
  if (!args) return usage('stream');
  const { values, image } = args;
  if (values.base !== undefined && values['base-node'] !== undefined) {
    throw new BlkioError('EINVAL', "'base' and 'base-node' cannot be specified at the same time");
  }
  if (values['backing-file'] !== undefined && values.base === undefined && values['base-node'] === undefined) {
    throw new BlkioError('EINVAL', "'backing-file' specified, but streaming the entire chain");
  }
  return runJob('stream', image, values, async (job, open, layer) => {
    const top = (await open()).node;
    let base: BlockNode | undefined;
    if (values.base !== undefined) {
      base = findBackingImage(top, values.base);
      if (!base) throw new BlkioError('EINVAL', `Cannot find '${values.base}' in the backing chain`);
    } else if (values['base-node'] !== undefined) {
      base = layer.findNodeOrThrow(values['base-node']);
    }
    await stream(layer, top, { ...job, base, backingFile: values['backing-file'] });
  });
}

/** `blkio commit [image options] [-q] [-b BASE] [-d] IMAGE`: qemu-img commit. */
export async function runCommit(argv: string[]): Promise<number> {
  const args = parse('commit', argv, {
    base: { type: 'string', short: 'b' },
    drop: { type: 'boolean', short: 'd' },
    q: { type: 'boolean', short: 'q' },
  });
  if (!args) return usage('commit');
  const { values, image } = args;
  const status = await runJob('commit', image, values, async (job, open, layer) => {
    await commitImage(layer, open, { ...job, base: values.base, drop: values.drop });
  });
  if (status === 0 && !values.q) writeStdout('Image committed.\n');
  return status;
}

const SYNC_MODES: readonly MirrorSync[] = ['full', 'top', 'none'];

/** `blkio mirror [image options] --target FILE [--target-format FMT] [--sync=full|top|none] IMAGE` */
export async function runMirror(argv: string[]): Promise<number> {
  const args = parse('mirror', argv, {
    target: { type: 'string' },
    'target-format': { type: 'string' },
    sync: { type: 'string', default: 'full' },
  });
  if (!args) return usage('mirror');
  const { values, image } = args;
  const targetFile = values.target;
  if (targetFile === undefined) throw new BlkioError('EINVAL', `Parameter 'target' is missing\n${USAGE.mirror}`);
  const sync = values.sync as MirrorSync;
  if (!SYNC_MODES.includes(sync)) throw new BlkioError('EINVAL', `Parameter 'sync' does not accept value '${values.sync}'`);
  return runJob('mirror', image, values, async (job, open, layer) => {
    const source = (await open()).node;
    const format = values['target-format'] ?? source.driver.name;
    // top: the target shares the source's backing file; none: the source itself backs it.
    const backing = sync === 'top' ? backingImage(source) : sync === 'none' ? source : undefined;
    await createImage(layer, {
      filename: targetFile,
      format,
      size: source.getLength(),
      backingFile: backing && backingNameFrom(targetFile, backing.filename),
      backingFormat: backing?.driver.name,
      noBackingOpen: true,
      quiet: true,
    });
    const target = await layer.openNode(targetFile, {
      driver: format,
      ...(backing ? { backing: backing.nodeName } : {}),
    });
    await mirror(layer, source, target, { ...job, sync });
  });
}

/** `-r`: bytes per second, with qemu-img's texts for bad values. */
function parseRate(text: string): number {
  try {
    return cvtnum(text);
  } catch {
    throw new BlkioError('EINVAL', 'Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for', [
      `${PROGRAM}: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`,
    ]);
  }
}

function usage(command: Command): number {
  writeStdout(USAGE[command] + '\n');
  return 0;
}
