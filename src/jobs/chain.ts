/** Backing-chain questions the jobs ask: which images are below, where is the base, which one has a name. */
import { realpathSync } from 'node:fs';
import { dirname, isAbsolute, relative } from 'node:path';
import { BlkioError } from '../errors.js';
import { hasProtocolPrefix, resolveBackingFilename } from '../block/graph.js';
import { chainNext } from '../block/io.js';
import type { BlockNode } from '../block/node.js';

/**
 * The images in top's backing chain, top's backing file first: filters are skipped, those above
 * top's own image too (QEMU's bdrv_backing_chain_next), so a filter's image is not its backing.
 */
export function backingChain(top: BlockNode): BlockNode[] {
  const chain: BlockNode[] = [];
  for (let n = chainNext(imageOf(top)); n; n = chainNext(n)) if (!n.isFilter) chain.push(n);
  return chain;
}

/** The image a node shows: itself, or what the filters above it pass to. */
function imageOf(node: BlockNode): BlockNode {
  let image = node;
  while (image.isFilter) image = chainNext(image)!;
  return image;
}

/** Top's backing file (through filters), if any. */
export function backingImage(top: BlockNode): BlockNode | undefined {
  return backingChain(top)[0];
}

/** The image directly above `base` in top's chain; with no base, the bottom-most image. */
export function overlayAbove(top: BlockNode, base: BlockNode | undefined): BlockNode {
  let overlay = imageOf(top);
  for (const n of backingChain(top)) {
    if (n === base) return overlay;
    overlay = n;
  }
  if (base) throw new BlkioError('EINVAL', `'${base.nodeName}' is not in the backing chain of '${top.filename}'`);
  return overlay;
}

/**
 * A backing image by the name a user gives it, as QEMU's bdrv_find_backing_image: the name in
 * its overlay's header; with a protocol (`json:` too) on either side, that name made full
 * (relative to the overlay's directory); else a path read relative to each overlay's directory
 * in turn that is the same existing file (after symlinks) as the overlay's backing file.
 * Undefined if absent.
 */
export function findBackingImage(top: BlockNode, name: string): BlockNode | undefined {
  let overlay = imageOf(top);
  for (const n of backingChain(top)) {
    if (name === overlay.backingFile) return n;
    if (hasProtocolPrefix(name) || hasProtocolPrefix(overlay.backingFile)) {
      if (name === resolveBackingFilename(overlay.filename, overlay.backingFile)) return n;
    } else {
      const wanted = realFile(resolveBackingFilename(overlay.filename, name));
      if (wanted !== undefined && wanted === realFile(resolveBackingFilename(overlay.filename, overlay.backingFile))) return n;
    }
    overlay = n;
  }
  return undefined;
}

/** The canonical path of an existing file, else undefined. */
function realFile(path: string): string | undefined {
  try {
    return realpathSync(path);
  } catch {
    return undefined;
  }
}

/** How far to look ahead in one block-status query (skipped ranges may be long). */
export const STATUS_LOOKAHEAD = 1 << 30;

/**
 * How the header of `imageFilename` should name `backingFilename` (both as opened, relative to
 * the working directory) so that it resolves from the image's directory. Absolute names and
 * protocol names stay as they are.
 */
export function backingNameFrom(imageFilename: string, backingFilename: string): string {
  if (isAbsolute(backingFilename) || hasProtocolPrefix(backingFilename)) return backingFilename;
  return relative(dirname(imageFilename), backingFilename);
}
