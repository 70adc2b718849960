/** Small helpers the image-format drivers share for their on-disk metadata. */
import type { BdrvChild } from '../block/child.js';
import { updateEdgePerms } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { defaultChildPerms, PERM_ALL } from '../block/permissions.js';
import { toBlkioError, type BlkioError } from '../errors.js';

/** A DataView over exactly these bytes (a Uint8Array may be a window into a larger buffer). */
export function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A little-endian uint64 as a number: exact below 2^53, and above that far past any file end, which is all an offset needs. */
export function getU64(v: DataView, at: number): number {
  return v.getUint32(at, true) + v.getUint32(at + 4, true) * 2 ** 32;
}

export function setU64(v: DataView, at: number, n: number): void {
  v.setUint32(at, n % 2 ** 32, true);
  v.setUint32(at + 4, Math.floor(n / 2 ** 32), true);
}

/** `bytes` bytes of `file` from `offset`, in a new buffer. */
export async function readBytes(file: BdrvChild, offset: number, bytes: number): Promise<Uint8Array> {
  const buf = new Uint8Array(bytes);
  await file.read(offset, bytes, buf);
  return buf;
}

/**
 * Writes during the open need the permissions on `file` that the node's parents take only later:
 * the node has no parents yet, so only the edge to its file changes.
 */
export function takeFilePermissions(node: BlockNode, file: BdrvChild): void {
  const p = defaultChildPerms(node, file, { perm: 0, shared: PERM_ALL });
  updateEdgePerms(file, p.perm, p.shared);
}

/** `disk size` of an image held in one file: what that file occupies. */
export function fileAllocatedSize(file: BdrvChild): Promise<number | undefined> {
  return file.node.driver.allocatedSize?.(file.node) ?? Promise.resolve(undefined);
}

/** A format's open failure; one without a text of its own is named after the file, as bdrv_open_driver does. */
export function openFailure(file: BdrvChild, e: unknown): BlkioError {
  const err = toBlkioError(e);
  return err.message === err.strerror ? err.prepend(`Could not open '${file.node.filename}': `) : err;
}
