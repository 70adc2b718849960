/**
 * `blkio img commit [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate] [-d] [-p|--progress=json] filename`
 *
 * The copying is the commit job's (src/jobs/commit.ts); this is qemu-img's command line,
 * progress and messages around it. `-b` implies `-d`. Ctrl-C stops the copy cleanly (qemu-img
 * dies of it, leaking the clusters it was writing): the images stay consistent, and the
 * message says to run the command again.
 */
import { BlkioError } from '../../errors.js';
import { Progress, floatPercent, parseProgressMode } from '../../cli/progress.js';
import { cancelOnSigint, interruptedMessage } from '../../cli/interrupt.js';
import { backingImage, findBackingImage } from '../../jobs/chain.js';
import { commitImage } from '../../jobs/commit.js';
import { isCancelled } from '../../jobs/job.js';
import type { FlatOptions } from '../../options/types.js';
import {
  checkCacheMode, imgCvtnum, oneImageName, openImg, runSubcommand, withLayer, writeOut,
} from './common.js';
import { IMAGE_OPTS_OPTION, parseImgArgs } from './options.js';

export function imgCommit(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    let cache = 'writeback';
    let base: string | undefined;
    let drop = false;
    let showProgress = false;
    let progressOption: string | undefined;
    let rateLimit = 0;
    const { format, imageOpts, quiet, operands, objects } = parseImgArgs('commit', argv, {
      short: ':f:ht:b:dpqr:',
      long: [IMAGE_OPTS_OPTION, { name: 'progress', hasArg: true, key: 'progress' }],
      own: (item) => {
        switch (item.key) {
          case 't': cache = item.value; return true;
          case 'b': base = item.value; drop = true; return true;
          case 'd': drop = true; return true;
          case 'p': showProgress = true; return true;
          case 'progress': progressOption = item.value; return true;
          case 'r': rateLimit = imgCvtnum('rate limit', item.value); return true;
          default: return false;
        }
      },
    });
    const filename = oneImageName(operands);
    checkCacheMode(cache);
    const sigint = cancelOnSigint();
    return withLayer(objects, async (layer) => {
      const open = (extraOptions: FlatOptions) => openImg(layer, { filename, format, imageOpts, cache, unmap: true, extraOptions });
      // Opened before the progress starts, as qemu-img does; the job reopens it only to make the base writable.
      let blk = await open({});
      const progress = new Progress(parseProgressMode(progressOption, showProgress, quiet), { percentOf: floatPercent });
      let done = 0;
      let total = 0;
      try {
        // qemu-img draws 0% before it looks for the base, so a missing one fails after that line.
        progress.update(0, 0);
        // qemu-img looks for -b first, and names the image as the user did.
        if (base !== undefined && !findBackingImage(blk.node, base)) {
          throw new BlkioError('EINVAL', `Did not find '${base}' in the backing chain of '${filename}'`);
        }
        if (base === undefined && !backingImage(blk.node)) throw new BlkioError('EINVAL', 'Image does not have a backing file');
        const first = blk;
        blk = await commitImage(layer, (extra) => (Object.keys(extra).length ? open(extra) : Promise.resolve(first)), {
          base, drop, rateLimit, signal: sigint.signal, onProgress: (d, t) => {
            done = d;
            total = t;
            progress.update(d, t);
          },
        });
        await blk.flush();
        progress.finish({ redrawFull: true });
      } catch (e) {
        throw isCancelled(e) ? new BlkioError('ECANCELED', interruptedMessage('commit', done, total)) : e;
      } finally {
        progress.dispose();
      }
      if (!quiet) writeOut('Image committed.\n');
      return 0;
    }).finally(sigint.stop);
  });
}
