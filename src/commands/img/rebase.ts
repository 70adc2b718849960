/**
 * `blkio img rebase [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing [-F fmt] filename`
 *
 * Safe mode keeps what the guest sees: every range the image does not hold itself is read
 * from the old and the new backing file, and where they differ the old data (or zeroes) is
 * written into the image before the header is switched to the new backing file. With -u only
 * the header changes. `-b ""` removes the backing file.
 */
import { BlkioError } from '../../errors.js';
import type { BlockNode } from '../../block/node.js';
import { PERM_ALL, PERM_CONSISTENT_READ } from '../../block/permissions.js';
import { isAllocated, isAllocatedAbove } from '../../block/io.js';
import { type BlockLayer, resolveBackingFilename } from '../../block/graph.js';
import { BlockBackend } from '../../block/backend.js';
import { Progress } from '../../cli/progress.js';
import { findBackingImage } from '../../jobs/chain.js';
import {
  checkCacheMode, checkSourceCacheMode, oneImageName, openImg, runSubcommand, skipFilters, UsageError, withLayer,
} from './common.js';
import { compareSectors } from './compare.js';
import { FORCE_SHARE_OPTION, IMAGE_OPTS_OPTION, parseImgArgs } from './options.js';

const IO_BUF_SIZE = 2 * 1024 * 1024;

export function imgRebase(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    let backing: string | undefined;
    let backingFormat: string | undefined;
    let unsafe = false;
    let showProgress = false;
    let cache = 'writeback';
    let srcCache = 'writeback';
    const { format, imageOpts, forceShare, quiet, operands, objects } = parseImgArgs('rebase', argv, {
      short: ':hf:F:b:upt:T:qU',
      long: [IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION],
      own: (item) => {
        switch (item.key) {
          case 'F': backingFormat = item.value; return true;
          case 'b': backing = item.value; return true;
          case 'u': unsafe = true; return true;
          case 'p': showProgress = true; return true;
          case 't': cache = item.value; return true;
          case 'T': srcCache = item.value; return true;
          default: return false;
        }
      },
    });
    const filename = oneImageName(operands);
    if (!unsafe && backing === undefined) throw new UsageError('Must specify backing file (-b) or use unsafe mode (-u)');
    const progress = new Progress(showProgress && !quiet ? 'human' : 'off', { minSkip: 2 });
    return withLayer(objects, async (layer) => {
      try {
        progress.update(0, 100);
        checkCacheMode(cache);
        checkSourceCacheMode(srcCache);
        const blk = await openImg(layer, { filename, format, imageOpts, cache, noBacking: unsafe });
        const image = skipFilters(blk.node);
        if (backingFormat !== undefined && !layer.driver(backingFormat)) {
          throw new BlkioError('EINVAL', `Invalid format name: '${backingFormat}'`);
        }
        if (!unsafe) {
          const newBacking = backing ? await openNewBacking(layer, image, backing, backingFormat, forceShare, srcCache) : undefined;
          await copyDifferences(blk, image, newBacking, progress);
        }
        await changeBackingFile(image, backing, backingFormat);
        await blk.flush();
        progress.update(100, 100);
        return 0;
      } finally {
        progress.dispose();
      }
    });
  });
}

interface NewBacking {
  blk: BlockBackend;
  /** The new backing file is already in the image's chain (rebasing onto a lower layer). */
  inChain: boolean;
}

async function openNewBacking(
  layer: BlockLayer, image: BlockNode, backing: string, backingFormat: string | undefined,
  forceShare: boolean, cache: string,
): Promise<NewBacking> {
  const full = resolveBackingFilename(image.filename, backing);
  const inChain = findBackingImage(image, full);
  if (inChain) return { blk: BlockBackend.attach(inChain, PERM_CONSISTENT_READ, PERM_ALL), inChain: true };
  try {
    const blk = await openImg(layer, { filename: full, format: backingFormat, readOnly: true, forceShare, cache });
    return { blk, inChain: false };
  } catch (e) {
    const err = e instanceof BlkioError ? e : new BlkioError('EIO', String(e));
    // openImg names the file it opened; qemu-img names the backing file as given.
    const inner = err.message.replace(`Could not open '${full}': `, '');
    throw new BlkioError(err.code, `Could not open new backing file '${backing}': ${inner}`, err.hints);
  }
}

/** Write into the image whatever the old backing chain shows differently from the new one. */
async function copyDifferences(blk: BlockBackend, image: BlockNode, newBacking: NewBacking | undefined, progress: Progress): Promise<void> {
  const oldBackingNode = image.backing?.node;
  const oldBacking = oldBackingNode ? BlockBackend.attach(oldBackingNode, PERM_CONSISTENT_READ, PERM_ALL) : undefined;
  const size = blk.getLength();
  const oldSize = oldBacking?.getLength() ?? 0;
  const newSize = newBacking?.blk.getLength() ?? 0;
  const bufOld = new Uint8Array(IO_BUF_SIZE);
  const bufNew = new Uint8Array(IO_BUF_SIZE);
  // qemu-img adds the same float share of 100% for every chunk, however long, so the sum drifts as its does.
  const step = size ? Math.fround(100 / Math.floor(size / Math.min(size, IO_BUF_SIZE))) : 0;
  try {
    for (let offset = 0, n = 0; offset < size; offset += n) {
      n = Math.min(IO_BUF_SIZE, size - offset);
      const own = await metadata(() => isAllocated(image, offset, n));
      n = own.pnum;
      if (own.allocated) continue;
      if (newBacking?.inChain) {
        const changed = await metadata(() => isAllocatedAbove(oldBackingNode!, newBacking.blk.node, false, offset, n));
        n = changed.pnum;
        if (!changed.allocated) continue;
      }
      const oldIsZero = offset >= oldSize;
      if (oldIsZero) {
        bufOld.fill(0, 0, n);
      } else {
        n = Math.min(n, oldSize - offset);
        await readOrFail(oldBacking!, offset, bufOld.subarray(0, n), 'error while reading from old backing file');
      }
      if (!newBacking || offset >= newSize) {
        bufNew.fill(0, 0, n);
      } else {
        n = Math.min(n, newSize - offset);
        await readOrFail(newBacking.blk, offset, bufNew.subarray(0, n), 'error while reading from new backing file');
      }
      for (let written = 0; written < n;) {
        const { differs, pnum } = compareSectors(bufOld.subarray(written, n), bufNew.subarray(written, n));
        if (differs) {
          try {
            if (oldIsZero) await blk.writeZeroes(offset + written, pnum);
            else await blk.write(offset + written, pnum, bufOld.subarray(written, written + pnum));
          } catch (e) {
            throw new BlkioError('EIO', `Error while writing to COW image: ${e instanceof BlkioError ? e.strerror : String(e)}`);
          }
        }
        written += pnum;
      }
      progress.advance(step);
    }
  } finally {
    oldBacking?.detach();
    if (newBacking?.inChain) newBacking.blk.detach();
  }
}

async function metadata<T>(query: () => Promise<T>): Promise<T> {
  try {
    return await query();
  } catch (e) {
    throw new BlkioError('EIO', `error while reading image metadata: ${e instanceof BlkioError ? e.strerror : String(e)}`);
  }
}

async function readOrFail(blk: BlockBackend, offset: number, buf: Uint8Array, message: string): Promise<void> {
  try {
    await blk.read(offset, buf.length, buf);
  } catch {
    throw new BlkioError('EIO', message);
  }
}

/** bdrv_change_backing_file with qemu-img rebase's error texts. */
async function changeBackingFile(image: BlockNode, backing: string | undefined, backingFormat: string | undefined): Promise<void> {
  const name = backing ?? '';
  // Removing the backing file drops its format too, whatever -F said.
  const format = name === '' ? '' : backingFormat;
  const fail = (reason: string): BlkioError => new BlkioError('EINVAL', `Could not change the backing file to '${backing ?? '(null)'}': ${reason}`);
  if (format === undefined) throw fail('backing format must be specified');
  if (!image.driver.changeBackingFile) throw fail('Operation not supported');
  try {
    await image.driver.changeBackingFile(image, name, format);
  } catch (e) {
    if (!(e instanceof BlkioError)) throw e;
    throw fail(e.code === 'ENOSPC' ? 'No space left in the file header' : e.strerror);
  }
  image.backingFile = name;
  image.backingFormat = format;
}
