/**
 * The `file` protocol's native helpers (native/blkio_native.c, part of blkio's addon): the
 * calls Node's fs lacks, lseek(SEEK_DATA/SEEK_HOLE) for block status and fallocate for hole
 * punching, zeroing and preallocation. Each runs on libuv's thread pool and takes a numeric fd
 * (FileHandle.fd).
 *
 * Without the addon (see src/native-addon.ts) `nativeFileOps()` returns undefined, quietly: the
 * driver keeps its pure-JS behaviour.
 */
import { BlkioError, toBlkioError } from '../errors.js';
import { nativeAddon } from '../native-addon.js';

export { ADDON_PATH } from '../native-addon.js';

/** The addon's exports (see native/blkio_native.c). */
interface Addon {
  lseek(fd: number, offset: number, whence: number): Promise<number>;
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  SEEK_DATA: number;
  SEEK_HOLE: number;
  FALLOC_FL_KEEP_SIZE: number;
  FALLOC_FL_PUNCH_HOLE: number;
  FALLOC_FL_ZERO_RANGE: number;
}

/** From an offset on, the file holds data, or a hole (reads as zeroes), up to `end` (exclusive). */
export interface Extent {
  zero: boolean;
  /** Infinity when the answer holds to the end of the file and beyond. */
  end: number;
}

export interface NativeFileOps {
  /** The extent at `offset`; all data when the file system cannot tell (SEEK_DATA unsupported). */
  extentAt(fd: number, offset: number): Promise<Extent>;
  /** Deallocate [offset, offset+length) inside the file, which reads as zeroes after; the size stays. */
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /** Zero [offset, offset+length) without writing data; the file grows to cover the range. */
  zeroRange(fd: number, offset: number, length: number): Promise<void>;
  /** Allocate (zeroed) space for [offset, offset+length); the file grows to cover the range. */
  allocate(fd: number, offset: number, length: number): Promise<void>;
  /** The file's length as lseek(SEEK_END) gives it, QEMU's way (files in /proc refuse it: EINVAL). */
  seekEnd(fd: number): Promise<number>;
}

/** Linux's SEEK_END (the same on every architecture). */
const SEEK_END = 2;

/** errno names meaning "this file system or file cannot do that" (QEMU folds them into ENOTSUP). */
const NOT_SUPPORTED = new Set(['ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'ENODEV', 'ENOTTY']);

/** The addon's rejection as a BlkioError: the errno name maps through src/errors.ts. */
function nativeError(e: unknown): BlkioError {
  const code = (e as { code?: unknown })?.code;
  return typeof code === 'string' && NOT_SUPPORTED.has(code) ? new BlkioError('ENOTSUP') : toBlkioError(e);
}

const ALL_DATA: Extent = { zero: false, end: Infinity };

function wrap(addon: Addon): NativeFileOps {
  const fallocate = (fd: number, mode: number, offset: number, length: number) =>
    addon.fallocate(fd, mode, offset, length).catch((e: unknown) => {
      throw nativeError(e);
    });
  return {
    async extentAt(fd, offset) {
      let data: number;
      try {
        data = await addon.lseek(fd, offset, addon.SEEK_DATA);
      } catch (e) {
        // ENXIO: no data from here to the end. Anything else (EINVAL: no SEEK_DATA here): assume data.
        return (e as { code?: unknown }).code === 'ENXIO' ? { zero: true, end: Infinity } : ALL_DATA;
      }
      if (data > offset) return { zero: true, end: data };
      if (data < offset) return ALL_DATA;
      const hole = await addon.lseek(fd, offset, addon.SEEK_HOLE).catch(() => offset);
      // hole === offset: the file changed between the two calls; data is the safe answer.
      return hole > offset ? { zero: false, end: hole } : ALL_DATA;
    },
    punchHole: (fd, offset, length) =>
      fallocate(fd, addon.FALLOC_FL_PUNCH_HOLE | addon.FALLOC_FL_KEEP_SIZE, offset, length),
    zeroRange: (fd, offset, length) => fallocate(fd, addon.FALLOC_FL_ZERO_RANGE, offset, length),
    allocate: (fd, offset, length) => fallocate(fd, 0, offset, length),
    seekEnd: (fd) => addon.lseek(fd, 0, SEEK_END).catch((e: unknown) => {
      throw nativeError(e);
    }),
  };
}

let loaded: { ops: NativeFileOps | undefined } | undefined;

/** The native helpers, or undefined when the addon is not available (or disabled). */
export function nativeFileOps(): NativeFileOps | undefined {
  if (!loaded) {
    const addon = nativeAddon();
    loaded = { ops: addon ? wrap(addon as Addon) : undefined };
  }
  return loaded.ops;
}
