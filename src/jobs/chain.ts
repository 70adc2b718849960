/** Backing-chain questions the jobs ask: where is the base, what does a range hold above it. */
import { realpathSync } from 'node:fs';
import { dirname, isAbsolute, relative } from 'node:path';
import { BlkioError } from '../errors.js';
import { hasProtocolPrefix, resolveBackingFilename } from '../block/graph.js';
import { nodeBlockStatus } from '../block/io.js';
import type { BlockNode } from '../block/node.js';
import { STATUS_ALLOCATED, STATUS_ZERO } from '../block/flags.js';

/** Below a filter: its filtered child; below an image: its backing file (not its storage). */
function nextInChain(node: BlockNode): BlockNode | undefined {
  return node.isFilter ? node.filteredChild?.node : node.backing?.node;
}

/** The images in top's backing chain, top's backing file first (filters in between skipped). */
export function backingChain(top: BlockNode): BlockNode[] {
  const chain: BlockNode[] = [];
  for (let n = nextInChain(top); n; n = nextInChain(n)) if (!n.isFilter) chain.push(n);
  return chain;
}

/** Top's backing file (through filters), if any. */
export function backingImage(top: BlockNode): BlockNode | undefined {
  return backingChain(top)[0];
}

/** The image directly above `base` in top's chain; with no base, the bottom-most image. */
export function overlayAbove(top: BlockNode, base: BlockNode | undefined): BlockNode {
  let overlay = top;
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
  let overlay = top;
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

export interface ChainStatus {
  /** Some layer from top down to (not including) the stop node holds the range. */
  allocated: boolean;
  /** The range reads as zeroes (allocated as zero, or nothing below holds data). */
  zero: boolean;
  /** Bytes from offset with this status (> 0). */
  pnum: number;
}

/**
 * What [offset, offset+bytes) of top holds in the layers above `stop` (undefined: whole chain).
 * As in QEMU 7.2, the zeroes past the end of a layer shorter than the ones above it count as
 * allocated in that layer (so commit and mirror write them as zeroes).
 */
export async function chainStatus(top: BlockNode, stop: BlockNode | undefined, offset: number, bytes: number): Promise<ChainStatus> {
  let pnum = bytes;
  for (let n: BlockNode | undefined = top; n && n !== stop; n = nextInChain(n)) {
    if (offset >= n.getLength()) return { allocated: n !== top, zero: true, pnum };
    const r = await nodeBlockStatus(n, offset, pnum);
    if (r.status & STATUS_ALLOCATED) return { allocated: true, zero: (r.status & STATUS_ZERO) !== 0, pnum: r.pnum };
    pnum = Math.min(pnum, r.pnum);
  }
  // Nothing in the whole chain holds it: it reads as zeroes.
  return { allocated: false, zero: stop === undefined, pnum };
}

/**
 * How the header of `imageFilename` should name `backingFilename` (both as opened, relative to
 * the working directory) so that it resolves from the image's directory. Absolute names and
 * protocol names stay as they are.
 */
export function backingNameFrom(imageFilename: string, backingFilename: string): string {
  if (isAbsolute(backingFilename) || hasProtocolPrefix(backingFilename)) return backingFilename;
  return relative(dirname(imageFilename), backingFilename);
}
