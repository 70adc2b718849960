/**
 * `blkio img dd [-U] [--image-opts] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output`
 *
 * dd(1)'s operands over images: the output (created anew in the output format) receives the
 * input's bytes from skip*bs up to count*bs (or the input's end). The copy runs in large
 * requests whatever the block size: only the byte range depends on bs.
 */
import { BlkioError, errnoError, toBlkioError } from '../../errors.js';
import { roundUp } from '../../arithmetic.js';
import type { BlockBackend } from '../../block/backend.js';
import type { BlockLayer } from '../../block/graph.js';
import { imgCvtnum, openImg, ReportLines, runSubcommand, withLayer, writeErr } from './common.js';
import { createImageFile, createRequestOptions, creationDrivers, parseCreateOptions, setCreateOption } from './create.js';
import { FORCE_SHARE_OPTION, IMAGE_OPTS_OPTION, parseImgArgs } from './options.js';
import { PROGRAM } from '../../cli/run.js';

const INT_MAX = 2 ** 31 - 1;
/** Bytes per request of the copy; two such buffers are in flight (one read, one written). */
const COPY_CHUNK = 4 * 1024 * 1024;

interface DdOperands {
  input?: string;
  output?: string;
  blockSize: number;
  count?: number;
  skip?: number;
}

/** The `name=value` operands; a later one overrides an earlier one, as in QEMU. */
function parseOperands(operands: readonly string[]): DdOperands {
  const dd: DdOperands = { blockSize: 512 };
  for (const operand of operands) {
    const eq = operand.indexOf('=');
    const name = eq < 0 ? operand : operand.slice(0, eq);
    const value = operand.slice(eq + 1);
    switch (eq < 0 ? undefined : name) {
      case 'bs': dd.blockSize = imgCvtnum('bs', value, 1, BigInt(INT_MAX)); break;
      case 'count': dd.count = imgCvtnum('count', value); break;
      case 'if': dd.input = value; break;
      case 'of': dd.output = value; break;
      case 'skip': dd.skip = imgCvtnum('skip', value); break;
      default: throw new ReportLines([`unrecognized operand ${name}`]);
    }
  }
  return dd;
}

export function imgDd(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    let outFormat = 'raw';
    const { format, imageOpts, forceShare, operands, objects } = parseImgArgs('dd', argv, {
      short: ':hf:O:U',
      long: [IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION],
      own: (item) => {
        if (item.key !== 'O') return false;
        outFormat = item.value;
        return true;
      },
    });
    const dd = parseOperands(operands);
    const { input, output } = dd;
    if (input === undefined || output === undefined) throw new BlkioError('EINVAL', 'Must specify both input and output files');

    return withLayer(objects, async (layer) => {
      const source = await openImg(layer, { filename: input, format, imageOpts, readOnly: true, forceShare });
      const inputSize = BigInt(source.getLength());
      const bs = BigInt(dd.blockSize);
      const end = dd.count !== undefined && BigInt(dd.count) * bs < inputSize ? BigInt(dd.count) * bs : inputSize;
      const start = BigInt(dd.skip ?? 0) * bs;
      const skipsPastEnd = start > end;
      const outputSize = skipsPastEnd ? 0 : Number(end - start);

      await createOutput(layer, outFormat, output, outputSize);
      const target = await openImg(layer, { filename: output, format: outFormat });
      if (skipsPastEnd) {
        // Like dd(1): an empty output and a complaint, but no failure.
        writeErr(`${PROGRAM}: ${input}: cannot skip to specified offset\n`);
        return 0;
      }
      await copy(source, Number(start), target, outputSize);
      return 0;
    });
  });
}

/** bdrv_create with the drivers' defaults and only the size set. */
async function createOutput(layer: BlockLayer, format: string, filename: string, size: number): Promise<void> {
  if (!layer.driver(format)) throw new BlkioError('EINVAL', 'Unknown file format');
  const { driver, protocol, specs } = creationDrivers(layer, format, filename);
  const values = parseCreateOptions(undefined, specs);
  setCreateOption(values, specs, 'size', String(size));
  try {
    await createImageFile(layer, driver, protocol, { filename, size: roundUp(size, 512), options: createRequestOptions(values) });
  } catch (e) {
    throw toBlkioError(e).prepend(`${filename}: error while creating output image: `);
  }
}

/** Copy `bytes` from `offset` of the source to the start of the target; reading runs one chunk ahead of writing. */
async function copy(source: BlockBackend, offset: number, target: BlockBackend, bytes: number): Promise<void> {
  const buffers = [new Uint8Array(Math.min(COPY_CHUNK, bytes)), new Uint8Array(Math.min(COPY_CHUNK, bytes))];
  // A read settles to its length or its error, so one that fails while a write is running is never left unhandled.
  const read = (pos: number, buf: Uint8Array): Promise<number | BlkioError> => {
    const n = Math.min(buf.length, bytes - pos);
    return source.read(offset + pos, n, buf).then(() => n, (e) => failure('reading from input', e));
  };
  let pending = bytes > 0 ? read(0, buffers[0]) : undefined;
  for (let pos = 0, i = 0; pending; i ^= 1) {
    const n = await pending;
    if (n instanceof BlkioError) throw n;
    const next = pos + n;
    pending = next < bytes ? read(next, buffers[i ^ 1]) : undefined;
    try {
      await target.write(pos, n, buffers[i]);
    } catch (e) {
      throw failure('writing to output', e);
    }
    pos = next;
  }
}

function failure(what: string, e: unknown): BlkioError {
  return errnoError(`error while ${what} image file`, e);
}
