/**
 * `blkio img resize [--image-opts] [-f fmt] [--preallocation=mode] [-q] [--shrink] filename [+|-]size`
 *
 * The size is the last argument and is taken off before the options are scanned, so that a
 * negative size is not read as an option.
 */
import { BlkioError } from '../../errors.js';
import { parseSizeOption } from '../../options/qemuopts.js';
import {
  badOption, checkNoFormatWithImageOpts, ExitStatus, newLayer, openImg, reportError, reportWarning, runSubcommand,
  scanImgArgs, UsageError, writeOut,
} from './common.js';
import { printHelp } from './help.js';

export const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'] as const;

export function imgResize(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    if (argv.length < 2) throw new UsageError('Not enough arguments');
    const sizeArg = argv[argv.length - 1];
    const { options, operands, objects } = scanImgArgs('resize', argv.slice(0, -1), ':f:hq', [
      { name: 'image-opts', hasArg: false, key: 'image-opts' },
      { name: 'preallocation', hasArg: true, key: 'preallocation' },
      { name: 'shrink', hasArg: false, key: 'shrink' },
    ]);
    let format: string | undefined;
    let quiet = false;
    let imageOpts = false;
    let prealloc = 'off';
    let shrink = false;
    for (const item of options) {
      switch (item.key) {
        case 'h': return printHelp();
        case 'f': format = item.value; break;
        case 'q': quiet = true; break;
        case 'image-opts': imageOpts = true; break;
        case 'preallocation':
          if (!(PREALLOC_MODES as readonly string[]).includes(item.value)) {
            throw new BlkioError('EINVAL', `Invalid preallocation mode '${item.value}'`);
          }
          prealloc = item.value;
          break;
        case 'shrink': shrink = true; break;
        default: badOption(item);
      }
    }
    if (operands.length !== 1) throw new UsageError('Expecting image file name and size');
    const relative = sizeArg.startsWith('+') ? 1 : sizeArg.startsWith('-') ? -1 : 0;
    const n = parseSizeOption('size', relative ? sizeArg.slice(1) : sizeArg);
    checkNoFormatWithImageOpts(imageOpts, format);

    const layer = newLayer(objects);
    try {
      const blk = await openImg(layer, { filename: operands[0], format, imageOpts, resize: true });
      const current = blk.getLength();
      const total = relative ? current + n * relative : n;
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
    } finally {
      await layer.closeAll();
    }
  });
}
