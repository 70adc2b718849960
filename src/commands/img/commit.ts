/**
 * `blkio img commit [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate] [-d] [-p|--progress=json] filename`
 *
 * The copying is the commit job's (src/jobs/commit.ts); this is qemu-img's command line,
 * progress and messages around it. `-b` implies `-d`.
 */
import { BlkioError } from '../../errors.js';
import { Progress, parseProgressMode } from '../../cli/progress.js';
import { findBackingImage } from '../../jobs/chain.js';
import { commitImage } from '../../jobs/commit.js';
import type { FlatOptions } from '../../options/types.js';
import {
  backingLayer, badOption, checkCacheMode, checkNoFormatWithImageOpts, imgCvtnum, newLayer, openImg, runSubcommand,
  scanImgArgs, UsageError, writeOut,
} from './common.js';
import { printHelp } from './help.js';

export function imgCommit(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    const { options, operands, objects } = scanImgArgs('commit', argv, ':f:ht:b:dpqr:', [
      { name: 'image-opts', hasArg: false, key: 'image-opts' },
      { name: 'progress', hasArg: true, key: 'progress' },
    ]);
    let format: string | undefined;
    let cache = 'writeback';
    let base: string | undefined;
    let drop = false;
    let showProgress = false;
    let progressOption: string | undefined;
    let quiet = false;
    let rateLimit = 0;
    let imageOpts = false;
    for (const item of options) {
      switch (item.key) {
        case 'h': return printHelp();
        case 'f': format = item.value; break;
        case 't': cache = item.value; break;
        case 'b': base = item.value; drop = true; break;
        case 'd': drop = true; break;
        case 'p': showProgress = true; break;
        case 'progress': progressOption = item.value; break;
        case 'q': quiet = true; break;
        case 'r': rateLimit = imgCvtnum('rate limit', item.value); break;
        case 'image-opts': imageOpts = true; break;
        default: badOption(item);
      }
    }
    if (operands.length !== 1) throw new UsageError('Expecting one image file name');
    const filename = operands[0];
    checkCacheMode(cache);
    checkNoFormatWithImageOpts(imageOpts, format);
    const layer = newLayer(objects);
    try {
      const open = (extraOptions: FlatOptions) => openImg(layer, { filename, format, imageOpts, cache, extraOptions });
      // Opened before the progress starts, as qemu-img does; the job reopens it only to make the base writable.
      let blk = await open({});
      // qemu-img looks for -b first, and names the image as the user did.
      if (base !== undefined && !findBackingImage(blk.node, base)) {
        throw new BlkioError('EINVAL', `Did not find '${base}' in the backing chain of '${filename}'`);
      }
      if (base === undefined && !backingLayer(blk.node)) throw new BlkioError('EINVAL', 'Image does not have a backing file');
      const progress = new Progress(parseProgressMode(progressOption, showProgress, quiet));
      try {
        progress.update(0, 0);
        const first = blk;
        blk = await commitImage(layer, (extra) => (Object.keys(extra).length ? open(extra) : Promise.resolve(first)), {
          base, drop, rateLimit, onProgress: (done, total) => progress.update(done, total),
        });
        await blk.flush();
        progress.finish();
      } finally {
        progress.dispose();
      }
      if (!quiet) writeOut('Image committed.\n');
      return 0;
    } finally {
      await layer.closeAll();
    }
  });
}
