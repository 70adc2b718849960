/**
 * The dirty bitmaps of a node, managed as QEMU's block-dirty-bitmap-* commands do: add (with
 * the format's consent for persistent ones), remove (from the image too), clear, enable,
 * disable and merge, each refusing a bitmap in a state it may not touch, with QEMU's texts.
 */
import { BlkioError } from '../errors.js';
import { defaultBitmapGranularity, DirtyBitmap } from './dirty-bitmap.js';
import { nodeInfoIfAny } from './io.js';
import type { BlockNode } from './node.js';

/** Longest bitmap name (BDRV_BITMAP_MAX_NAME_SIZE). */
const MAX_NAME_SIZE = 1023;

/** What a bitmap must not be for an operation (QEMU's BDRV_BITMAP_* check flags). */
const READONLY = 1;
const INCONSISTENT = 2;
const ALLOW_READONLY = INCONSISTENT;
const ALL_CHECKS = READONLY | INCONSISTENT;

function checkBitmap(bitmap: DirtyBitmap, flags: number): void {
  if (flags & READONLY && bitmap.readonly) {
    throw new BlkioError('EPERM', `Bitmap '${bitmap.name}' is readonly and cannot be modified`);
  }
  if (flags & INCONSISTENT && bitmap.inconsistent) {
    throw new BlkioError('EINVAL', `Bitmap '${bitmap.name}' is inconsistent and cannot be used`,
      ['Try block-dirty-bitmap-remove to delete this bitmap from disk']);
  }
}

/** Refuses a bitmap that is read-only or inconsistent (for a resize, say). */
export function checkBitmapWritable(bitmap: DirtyBitmap): void {
  checkBitmap(bitmap, ALL_CHECKS);
}

export function findBitmap(node: BlockNode, name: string): DirtyBitmap | undefined {
  return node.dirtyBitmaps.find((b) => b.name === name);
}

function lookupBitmap(node: BlockNode, name: string): DirtyBitmap {
  const bitmap = findBitmap(node, name);
  if (!bitmap) throw new BlkioError('ENOENT', `Dirty bitmap '${name}' not found`);
  return bitmap;
}

/** A new bitmap over `size` bytes of `node` (bdrv_create_dirty_bitmap); the caller adds it to the node. */
export function createBitmap(node: BlockNode, name: string, granularity: number, size: number): DirtyBitmap {
  if (findBitmap(node, name)) throw new BlkioError('EEXIST', `Bitmap already exists: ${name}`);
  if (new TextEncoder().encode(name).length > MAX_NAME_SIZE) throw new BlkioError('EINVAL', `Bitmap name too long: ${name}`);
  return new DirtyBitmap(name, granularity, size);
}

export interface AddBitmapOptions {
  /** Bytes per bit; undefined for the node's default. */
  granularity?: number;
  persistent: boolean;
  disabled: boolean;
}

export async function addBitmap(node: BlockNode, name: string, o: AddBitmapOptions): Promise<void> {
  if (name === '') throw new BlkioError('EINVAL', 'Bitmap name cannot be empty');
  let granularity = o.granularity;
  if (granularity === undefined) {
    granularity = defaultBitmapGranularity(nodeInfoIfAny(node)?.clusterSize);
  } else if (granularity < 512 || granularity & (granularity - 1)) {
    throw new BlkioError('EINVAL', 'Granularity must be power of 2 and at least 512');
  }
  if (o.persistent) {
    if (!node.driver.canStoreNewDirtyBitmap) throw new BlkioError('ENOTSUP', `Can't store persistent bitmaps to ${node.nodeName}: Operation not supported`);
    await node.driver.canStoreNewDirtyBitmap(node, name, granularity);
  }
  const bitmap = createBitmap(node, name, granularity, node.getLength());
  bitmap.enabled = !o.disabled;
  bitmap.persistent = o.persistent;
  node.dirtyBitmaps.unshift(bitmap);
}

export async function removeBitmap(node: BlockNode, name: string): Promise<void> {
  const bitmap = lookupBitmap(node, name);
  checkBitmap(bitmap, READONLY);
  if (bitmap.persistent) await node.driver.removePersistentDirtyBitmap?.(node, name);
  node.dirtyBitmaps.splice(node.dirtyBitmaps.indexOf(bitmap), 1);
}

export function clearBitmap(node: BlockNode, name: string): void {
  const bitmap = lookupBitmap(node, name);
  checkBitmap(bitmap, ALL_CHECKS);
  bitmap.clear();
}

export function enableBitmap(node: BlockNode, name: string, enabled: boolean): void {
  const bitmap = lookupBitmap(node, name);
  checkBitmap(bitmap, ALLOW_READONLY);
  bitmap.enabled = enabled;
}

/** Add the dirty areas of `sourceNode`'s bitmap `sourceName` to `node`'s bitmap `name`. */
export function mergeBitmap(node: BlockNode, name: string, sourceNode: BlockNode, sourceName: string): void {
  const target = lookupBitmap(node, name);
  const source = lookupBitmap(sourceNode, sourceName);
  // QEMU 7.2 finds both bitmaps, checks the source and then the target, and compares the
  // sizes last (merge refuses different ones).
  checkBitmap(source, ALLOW_READONLY);
  checkBitmap(target, ALL_CHECKS);
  target.merge(source);
}
