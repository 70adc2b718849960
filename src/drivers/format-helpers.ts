/** Small helpers the image-format drivers share for their on-disk metadata. */
import type { BdrvChild } from '../block/child.js';
import { toBlkioError, type BlkioError } from '../errors.js';

/** A DataView over exactly these bytes (a Uint8Array may be a window into a larger buffer). */
export function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** `bytes` bytes of `file` from `offset`, in a new buffer. */
export async function readBytes(file: BdrvChild, offset: number, bytes: number): Promise<Uint8Array> {
  const buf = new Uint8Array(bytes);
  await file.read(offset, bytes, buf);
  return buf;
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
