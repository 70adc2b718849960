/**
 * `blkio img resize [--image-opts] [-f fmt] [--preallocation=mode] [-q] [--shrink] filename [+|-]size`
 *
 * The size is the last argument and is taken off before the options are scanned, so that a
 * negative size is not read as an option.
 */
import { BlkioError } from '../../errors.js';
import { parseSizeOption } from '../../options/qemuopts.js';
import { ExitStatus, openImg, reportError, reportWarning, runSubcommand, UsageError, withLayer, writeOut } from './common.js';
import { IMAGE_OPTS_OPTION, parseImgArgs } from './options.js';

export const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'] as const;

/** qemu-img computes sizes in int64: from 2^63 up they wrap to negative. */
function toInt64(n: number): number {
  return n >= 2 ** 63 ? n - 2 ** 64 : n;
}

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
    const size = parseSizeOption('size', relative ? sizeArg.slice(1) : sizeArg, 'qemuopts', reportWarning);
    const n = toInt64(size);

    return withLayer(objects, async (layer) => {
      const blk = await openImg(layer, { filename: operands[0], format, imageOpts, resize: true });
      const current = blk.getLength();
      const total = toInt64(relative ? current + n * relative : n);
      if (total <= 0) throw new BlkioError('EINVAL', 'New image size must be positive');
      if (total <= current && prealloc !== 'off') throw new BlkioError('EINVAL', 'Preallocation can only be used for growing images');
      if (total < current && !shrink) {
        reportError(new BlkioError('EINVAL', 'Use the --shrink option to perform a shrink operation.'));
        reportWarning('warning: Shrinking an image will delete all data beyond the shrunken image\'s end. ' +
          'Before performing such an operation, make sure there is no important data there.');
        throw new ExitStatus(1);
      }
      await blk.truncate(total, true, prealloc);
      await blk.flush();
      if (!quiet) writeOut('Image resized.\n');
      return 0;
    });
  });
}
