/**
 * `blkio img resize [--image-opts] [-f fmt] [--preallocation=mode] [-q] [--shrink] filename [+|-]size`
 *
 * The size is the last argument and is taken off before the options are scanned, so that a
 * negative size is not read as an option.
 */
import { BlkioError } from '../../errors.js';
import { parseSizeOptionExact } from '../../options/qemuopts.js';
import { lengthPastMaximum, MAX_NODE_LENGTH } from '../../block/io.js';
import { ExitStatus, openImg, reportError, reportWarning, runSubcommand, UsageError, withLayer, writeOut } from './common.js';
import { IMAGE_OPTS_OPTION, parseImgArgs } from './options.js';

export const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'] as const;

export function imgResize(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    if (argv.length < 2) throw new UsageError('Not enough arguments');
    const sizeArg = argv[argv.length - 1];
    let prealloc = 'off';
    let shrink = false;
    const { format, imageOpts, quiet, operands, objects } = parseImgArgs('resize', argv.slice(0, -1), {
      short: ':f:hq',
      long: [IMAGE_OPTS_OPTION, { name: 'preallocation', hasArg: true, key: 'preallocation' }, { name: 'shrink', hasArg: false, key: 'shrink' }],
      own: (item) => {
        switch (item.key) {
          case 'preallocation':
            if (!(PREALLOC_MODES as readonly string[]).includes(item.value)) {
              throw new BlkioError('EINVAL', `Invalid preallocation mode '${item.value}'`);
            }
            prealloc = item.value;
            return true;
          case 'shrink': shrink = true; return true;
          default: return false;
        }
      },
    });
    if (operands.length !== 1) throw new UsageError('Expecting image file name and size');
    const relative = sizeArg.startsWith('+') ? 1 : sizeArg.startsWith('-') ? -1 : 0;
    // qemu-img computes sizes in int64 (from 2^63 up they wrap to negative), exactly: a size near
    // 2^63 stays itself, where a JavaScript number would round it.
    const n = BigInt.asIntN(64, parseSizeOptionExact('size', relative ? sizeArg.slice(1) : sizeArg, 'qemuopts', reportWarning));

    return withLayer(objects, async (layer) => {
      const blk = await openImg(layer, { filename: operands[0], format, imageOpts, resize: true });
      const current = blk.getLength();
      const exactTotal = BigInt.asIntN(64, relative ? BigInt(current) + n * BigInt(relative) : n);
      if (exactTotal <= 0n) throw new BlkioError('EINVAL', 'New image size must be positive');
      const total = Number(exactTotal);
      if (total <= current && prealloc !== 'off') throw new BlkioError('EINVAL', 'Preallocation can only be used for growing images');
      if (total < current && !shrink) {
        reportError(new BlkioError('EINVAL', 'Use the --shrink option to perform a shrink operation.'));
        reportWarning('warning: Shrinking an image will delete all data beyond the shrunken image\'s end. ' +
          'Before performing such an operation, make sure there is no important data there.');
        throw new ExitStatus(1);
      }
      if (exactTotal > BigInt(MAX_NODE_LENGTH)) throw lengthPastMaximum(exactTotal);
      await blk.truncate(total, true, prealloc);
      await blk.flush();
      if (!quiet) writeOut('Image resized.\n');
      return 0;
    });
  });
}
