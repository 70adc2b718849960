/**
 * The one error class of blkio: an errno-like code plus the exact message QEMU would print.
 * Every layer throws it; only the CLI turns it into `blkio: <message>` and an exit code.
 */

/** errno names we use, with the strerror() text glibc prints for them. */
export const STRERROR = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EIO: 'Input/output error',
  ENXIO: 'No such device or address',
  E2BIG: 'Argument list too long',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  EISDIR: 'Is a directory',
  EINVAL: 'Invalid argument',
  ETXTBSY: 'Text file busy',
  EFBIG: 'File too large',
  ENOSPC: 'No space left on device',
  ESPIPE: 'Illegal seek',
  EROFS: 'Read-only file system',
  ERANGE: 'Numerical result out of range',
  EOVERFLOW: 'Value too large for defined data type',
  ENOTSUP: 'Operation not supported',
  ECANCELED: 'Operation canceled',
  EMEDIUMTYPE: 'Wrong medium type',
  ENOMEDIUM: 'No medium found',
  EFAULT: 'Bad address',
  ENOTDIR: 'Not a directory',
  ELOOP: 'Too many levels of symbolic links',
  ETIMEDOUT: 'Connection timed out',
  ECONNREFUSED: 'Connection refused',
  ENOTCONN: 'Transport endpoint is not connected',
  ESHUTDOWN: 'Cannot send after transport endpoint shutdown',
} as const;

export type Errno = keyof typeof STRERROR;

/** Linux errno numbers, for options such as blkdebug's `errno=5`. */
export const ERRNO_NUMBERS: Record<number, Errno> = {
  1: 'EPERM', 2: 'ENOENT', 5: 'EIO', 6: 'ENXIO', 7: 'E2BIG', 9: 'EBADF', 11: 'EAGAIN', 12: 'ENOMEM',
  13: 'EACCES', 14: 'EFAULT', 16: 'EBUSY', 17: 'EEXIST', 20: 'ENOTDIR', 21: 'EISDIR',
  22: 'EINVAL', 26: 'ETXTBSY', 27: 'EFBIG', 28: 'ENOSPC', 29: 'ESPIPE', 30: 'EROFS', 34: 'ERANGE', 40: 'ELOOP',
  75: 'EOVERFLOW',
  95: 'ENOTSUP', 107: 'ENOTCONN', 108: 'ESHUTDOWN', 110: 'ETIMEDOUT', 111: 'ECONNREFUSED',
  123: 'ENOMEDIUM', 124: 'EMEDIUMTYPE', 125: 'ECANCELED',
};

export class BlkioError extends Error {
  readonly code: Errno;
  /** Extra lines QEMU prints after the message (hints such as "Is another process using ..."). */
  readonly hints: string[];

  constructor(code: Errno, message?: string, hints: string[] = []) {
    super(message ?? STRERROR[code]);
    this.name = 'BlkioError';
    this.code = code;
    this.hints = hints;
  }

  /** The strerror() text of the code, as in `read failed: Input/output error`. */
  get strerror(): string {
    return STRERROR[this.code];
  }

  /** A new error with the same code and a message prefixed the way QEMU's error_prepend does. */
  prepend(prefix: string): BlkioError {
    return new BlkioError(this.code, prefix + this.message, this.hints);
  }
}

/** Shorthand: an error whose message is just the strerror text (a plain -errno in QEMU). */
export function errno(code: Errno): BlkioError {
  return new BlkioError(code);
}

/** Convert anything thrown (Node system errors included) into a BlkioError. */
export function toBlkioError(e: unknown): BlkioError {
  if (e instanceof BlkioError) return e;
  const code = (e as { code?: unknown })?.code;
  if (typeof code === 'string' && code in STRERROR) return new BlkioError(code as Errno);
  if (code === 'EOPNOTSUPP') return new BlkioError('ENOTSUP');
  const message = e instanceof Error ? e.message : String(e);
  return new BlkioError('EIO', message);
}
