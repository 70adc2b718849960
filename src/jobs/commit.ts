/**
 * Commit: write what `top` (and every image between it and `base`) holds into `base`, then
 * empty `top` unless asked not to — `qemu-img commit`. One implementation for `blkio commit`
 * and `blkio img commit`:
 *
 *   // CLI: open the image (read-write) through a callback; the base is found by its -b name
 *   // and made writable by reopening with the extra options the callback merges in.
 *   await commitImage(layer, (extra) => openTheImage({ ...extra }), { base: '-b value', drop: !!d, onProgress, signal });
 *   print('Image committed.\n');   // the caller prints, and closes the layer afterwards
 *
 *   // Library: base must already be writable (opened with read-only=off).
 *   await commit(layer, top, base, { drop: false });
 *
 * Errors are BlkioErrors with qemu-img's texts: `Image does not have a backing file`,
 * `Did not find '<b>' in the backing chain of '<image>'`. A cancelled commit (ECANCELED) leaves
 * top's view intact (top still holds its data) and base partly updated; running it again
 * finishes it. Like qemu-img, `-b` implies `-d`, and a base smaller than top is grown.
 */
import { BlkioError } from '../errors.js';
import type { BlockBackend } from '../block/backend.js';
import type { BlockLayer } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { PERM_ALL, PERM_RESIZE, PERM_WRITE } from '../block/permissions.js';
import type { FlatOptions } from '../options/types.js';
import { backingChain, findBackingImage } from './chain.js';
import { Job, type JobOptions } from './job.js';
import { mirrorCopy, planAboveInChunks } from './mirror.js';

export interface CommitOptions extends JobOptions {
  /** `-d`: leave top's data in place (commit only). */
  drop?: boolean;
}

/** Copy top's data (down to, not including, base) into base; empty top unless `drop`. */
export async function commit(layer: BlockLayer, top: BlockNode, base: BlockNode, options: CommitOptions = {}): Promise<void> {
  const job = new Job(layer, options);
  await job.run(async () => {
    const length = top.getLength();
    if (base.getLength() < length) {
      const resizer = job.attach(base, PERM_WRITE | PERM_RESIZE, PERM_ALL);
      await resizer.truncate(length, false);
    }
    await mirrorCopy(job, top, base, planAboveInChunks(top, base, base));
  });
  // A format that cannot empty itself keeps its data, as qemu-img ignores ENOTSUP here.
  if (!options.drop && top.driver.makeEmpty) await top.driver.makeEmpty(top);
}

export interface CommitImageOptions extends CommitOptions {
  /** `-b`: the backing image to commit into, as the user named it; implies `drop`. */
  base?: string;
}

/** Opens the top image read-write with `extra` merged into its options, and attaches a user. */
export type OpenImage = (extra: FlatOptions) => Promise<BlockBackend>;

/** Find the commit base: `-b name` in top's chain, else top's backing file; and its depth. */
function findBase(top: BlockNode, name: string | undefined): { base: BlockNode; depth: number } {
  const chain = backingChain(top);
  if (chain.length === 0) throw new BlkioError('EINVAL', 'Image does not have a backing file');
  const base = name === undefined ? chain[0] : findBackingImage(top, name);
  if (!base) throw new BlkioError('EINVAL', `Did not find '${name}' in the backing chain of '${top.filename}'`);
  return { base, depth: chain.indexOf(base) + 1 };
}

/** The option prefix that names `target` from `root` through the children (`file.backing.`). */
function optionPath(root: BlockNode, target: BlockNode): string {
  const below = (node: BlockNode): string | undefined => {
    if (node === target) return '';
    for (const edge of node.children) {
      const rest = below(edge.node);
      if (rest !== undefined) return `${edge.name}.${rest}`;
    }
    return undefined;
  };
  return below(root)!;
}

/** qemu-img commit on an image opened by `open`; see the file comment. Returns the image's user. */
export async function commitImage(layer: BlockLayer, open: OpenImage, options: CommitImageOptions = {}): Promise<BlockBackend> {
  let blk = await open({});
  let { base, depth } = findBase(blk.node, options.base);
  if (base.readOnly) {
    // Backing files open read-only; open the chain again with this one writable.
    const path = optionPath(blk.node, base);
    blk.detach();
    await layer.closeAll();
    blk = await open({ [`${path}read-only`]: 'off' });
    base = backingChain(blk.node)[depth - 1];
  }
  await commit(layer, blk.node, base, { ...options, drop: options.drop || options.base !== undefined });
  return blk;
}
