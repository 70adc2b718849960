/**
 * `blkio img bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename`
 *
 * Sends `count` reads (or writes of the pattern byte) of one buffer size, `depth` of them in
 * flight at a time, at offsets that advance by the step and wrap at the image's end; with a
 * flush interval, a flush after every so many completed requests (the queue drained first
 * unless --no-drain). Prints the run's wall time.
 */
import { BlkioError, toBlkioError } from '../../errors.js';
import type { BlockBackend } from '../../block/backend.js';
import { PROGRAM } from '../../cli/run.js';
import { formatFixed, scanUnsigned } from '../../options/size.js';
import { isCacheMode } from '../../cli/open-image.js';
import { AIO_MODES, DIRECT_CACHE_MODES, usesHostFiles } from '../io/open.js';
import { imgCvtnum, oneImageName, openImg, runSubcommand, withLayer, writeOut } from './common.js';
import { FORCE_SHARE_OPTION, IMAGE_OPTS_OPTION, parseImgArgs } from './options.js';

const INT_MAX = 2 ** 31 - 1;

export interface BenchParams {
  count: number;
  depth: number;
  offset: number;
  bufferSize: number;
  step: number;
  write: boolean;
  pattern: number;
  flushInterval: number;
  drainOnFlush: boolean;
}

/** qemu_strtoul (base 0, whole string) limited to `max`; undefined when invalid. */
function parseUlong(text: string, max: number): number | undefined {
  const scanned = scanUnsigned(text, 0);
  if (!scanned || scanned.end !== text.length || scanned.overflow) return undefined;
  // A negative number wraps around to a huge unsigned one; only -0 stays in range.
  if (scanned.value > BigInt(max) || (scanned.negative && scanned.value !== 0n)) return undefined;
  return Number(scanned.value);
}

function ulongOption(text: string, max: number, error: string): number {
  const value = parseUlong(text, max);
  if (value === undefined) throw new BlkioError('EINVAL', error);
  return value;
}

export function imgBench(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    const params: BenchParams = {
      count: 75000, depth: 64, offset: 0, bufferSize: 4096, step: 0, write: false, pattern: 0, flushInterval: 0, drainOnFlush: true,
    };
    let nativeAio = false;
    let cache: string | undefined;
    // -q is accepted but, as in QEMU 7.2, silences nothing.
    const { format, imageOpts, forceShare, operands } = parseImgArgs('bench', argv, {
      short: ':hc:d:f:ni:o:qs:S:t:wU',
      long: [
        { name: 'flush-interval', hasArg: true, key: 'flush-interval' },
        IMAGE_OPTS_OPTION,
        { name: 'pattern', hasArg: true, key: 'pattern' },
        { name: 'no-drain', hasArg: false, key: 'no-drain' },
        FORCE_SHARE_OPTION,
      ],
      objectFailureStatus: false,
      own: (item) => {
        switch (item.key) {
          case 'c': params.count = ulongOption(item.value, INT_MAX, 'Invalid request count specified'); return true;
          case 'd': params.depth = ulongOption(item.value, INT_MAX, 'Invalid queue depth specified'); return true;
          case 'n': nativeAio = true; return true;
          case 'i':
            if (!AIO_MODES.includes(item.value)) throw new BlkioError('EINVAL', `Invalid aio option: ${item.value}`);
            nativeAio = item.value === 'native';
            return true;
          case 'o': params.offset = imgCvtnum('offset', item.value); return true;
          case 's': params.bufferSize = imgCvtnum('buffer size', item.value, 0, BigInt(INT_MAX)); return true;
          case 'S': params.step = imgCvtnum('step_size', item.value, 0, BigInt(INT_MAX)); return true;
          case 't':
            if (!isCacheMode(item.value)) throw new BlkioError('EINVAL', 'Invalid cache mode');
            cache = item.value;
            return true;
          case 'w': params.write = true; return true;
          case 'pattern': params.pattern = ulongOption(item.value, 0xff, 'Invalid pattern byte specified'); return true;
          case 'flush-interval': params.flushInterval = ulongOption(item.value, INT_MAX, 'Invalid flush interval specified'); return true;
          case 'no-drain': params.drainOnFlush = false; return true;
          default: return false;
        }
      },
    });
    const filename = oneImageName(operands);
    if (!params.write && params.flushInterval) throw new BlkioError('EINVAL', '--flush-interval is only available in write tests');
    if (params.flushInterval && params.flushInterval < params.depth) throw new BlkioError('EINVAL', "Flush interval can't be smaller than depth");
    return withLayer(undefined, async (layer) => {
      const blk = await openImg(layer, { filename, format, imageOpts, readOnly: !params.write, forceShare, cache });
      // Linux native AIO needs O_DIRECT on the host files QEMU would open with it.
      if (nativeAio && !DIRECT_CACHE_MODES.includes(cache ?? 'writeback') && usesHostFiles(blk.node)) {
        throw new BlkioError('EINVAL', `Could not open '${filename}': aio=native was specified, but it requires cache.direct=on, which was not specified.`);
      }
      // QEMU 7.2 opens the image, then waits forever for requests it never sends.
      if (params.depth === 0 && params.count > 0) throw new BlkioError('EINVAL', 'Invalid queue depth specified');
      const step = params.step || params.bufferSize;
      writeOut(
        `Sending ${params.count} ${params.write ? 'write' : 'read'} requests, ${params.bufferSize} bytes each, ` +
          `${params.depth} in parallel (starting at offset ${params.offset}, step size ${step})\n`,
      );
      if (params.flushInterval) writeOut(`Sending flush every ${params.flushInterval} requests\n`);
      const start = process.hrtime.bigint();
      await runBench(blk, { ...params, step });
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      writeOut(`Run completed in ${formatFixed(seconds, 3)} seconds.\n`);
      return 0;
    });
  });
}

/**
 * The request queue: each completion counts one request done and refills the queue up to the
 * depth, except when a flush is due; a draining flush waits for the queue to empty, and the
 * requests after it start when it completes.
 */
export function runBench(blk: BlockBackend, p: BenchParams): Promise<void> {
  const buffer = new Uint8Array(p.bufferSize).fill(p.pattern);
  const imageSize = blk.getLength();
  let remaining = p.count;
  let inFlight = 0;
  let nextOffset = p.offset;
  return new Promise((resolve, reject) => {
    // QEMU exits at the first failure: the requests still in flight are abandoned and nothing
    // cached is written back (a write past the end leaves the image as it was).
    const fail = (what: string, e: unknown): never => blk.node.layer.fatal(`${PROGRAM}: ${what}: ${toBlkioError(e).strerror}`);
    // Where `fatal` throws instead of exiting (tests, library users), the run fails with it.
    const track = (request: Promise<void>, then: () => void, what: string): void => {
      request.then(then, (e) => fail(what, e)).catch(reject);
    };
    const submit = (): void => {
      while (remaining > inFlight && inFlight < p.depth) {
        const offset = nextOffset;
        inFlight++;
        // An empty image leaves the offset where it is (QEMU divides by zero here).
        nextOffset = imageSize ? (nextOffset + p.step) % imageSize : nextOffset;
        track(p.write ? blk.write(offset, p.bufferSize, buffer) : blk.read(offset, p.bufferSize, buffer), completed, 'Failed request');
      }
    };
    const completed = (): void => {
      const due = remaining - inFlight;
      remaining--;
      inFlight--;
      // The run ends with the last request, not with a flush that follows it.
      if (remaining === 0) resolve();
      if (p.flushInterval && due % p.flushInterval === 0) {
        if (!p.drainOnFlush) {
          track(blk.flush(), () => undefined, 'Failed flush request');
        } else {
          if (inFlight === 0) track(blk.flush(), submit, 'Failed request');
          return;
        }
      }
      submit();
    };
    if (remaining === 0) resolve();
    submit();
  });
}
