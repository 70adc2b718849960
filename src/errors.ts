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

/** glibc's strerror() of errno numbers 1 to 133 (index + 1), for raw numbers such as blkdebug's `errno=N`. */
const GLIBC_STRERROR: readonly string[] = [
  'Operation not permitted',
  'No such file or directory',
  'No such process',
  'Interrupted system call',
  'Input/output error',
  'No such device or address',
  'Argument list too long',
  'Exec format error',
  'Bad file descriptor',
  'No child processes',
  'Resource temporarily unavailable',
  'Cannot allocate memory',
  'Permission denied',
  'Bad address',
  'Block device required',
  'Device or resource busy',
  'File exists',
  'Invalid cross-device link',
  'No such device',
  'Not a directory',
  'Is a directory',
  'Invalid argument',
  'Too many open files in system',
  'Too many open files',
  'Inappropriate ioctl for device',
  'Text file busy',
  'File too large',
  'No space left on device',
  'Illegal seek',
  'Read-only file system',
  'Too many links',
  'Broken pipe',
  'Numerical argument out of domain',
  'Numerical result out of range',
  'Resource deadlock avoided',
  'File name too long',
  'No locks available',
  'Function not implemented',
  'Directory not empty',
  'Too many levels of symbolic links',
  'Unknown error 41',
  'No message of desired type',
  'Identifier removed',
  'Channel number out of range',
  'Level 2 not synchronized',
  'Level 3 halted',
  'Level 3 reset',
  'Link number out of range',
  'Protocol driver not attached',
  'No CSI structure available',
  'Level 2 halted',
  'Invalid exchange',
  'Invalid request descriptor',
  'Exchange full',
  'No anode',
  'Invalid request code',
  'Invalid slot',
  'Unknown error 58',
  'Bad font file format',
  'Device not a stream',
  'No data available',
  'Timer expired',
  'Out of streams resources',
  'Machine is not on the network',
  'Package not installed',
  'Object is remote',
  'Link has been severed',
  'Advertise error',
  'Srmount error',
  'Communication error on send',
  'Protocol error',
  'Multihop attempted',
  'RFS specific error',
  'Bad message',
  'Value too large for defined data type',
  'Name not unique on network',
  'File descriptor in bad state',
  'Remote address changed',
  'Can not access a needed shared library',
  'Accessing a corrupted shared library',
  '.lib section in a.out corrupted',
  'Attempting to link in too many shared libraries',
  'Cannot exec a shared library directly',
  'Invalid or incomplete multibyte or wide character',
  'Interrupted system call should be restarted',
  'Streams pipe error',
  'Too many users',
  'Socket operation on non-socket',
  'Destination address required',
  'Message too long',
  'Protocol wrong type for socket',
  'Protocol not available',
  'Protocol not supported',
  'Socket type not supported',
  'Operation not supported',
  'Protocol family not supported',
  'Address family not supported by protocol',
  'Address already in use',
  'Cannot assign requested address',
  'Network is down',
  'Network is unreachable',
  'Network dropped connection on reset',
  'Software caused connection abort',
  'Connection reset by peer',
  'No buffer space available',
  'Transport endpoint is already connected',
  'Transport endpoint is not connected',
  'Cannot send after transport endpoint shutdown',
  'Too many references: cannot splice',
  'Connection timed out',
  'Connection refused',
  'Host is down',
  'No route to host',
  'Operation already in progress',
  'Operation now in progress',
  'Stale file handle',
  'Structure needs cleaning',
  'Not a XENIX named type file',
  'No XENIX semaphores available',
  'Is a named type file',
  'Remote I/O error',
  'Disk quota exceeded',
  'No medium found',
  'Wrong medium type',
  'Operation canceled',
  'Required key not available',
  'Key has expired',
  'Key has been revoked',
  'Key was rejected by service',
  'Owner died',
  'State not recoverable',
  'Operation not possible due to RF-kill',
  'Memory page has hardware error',
];

/** glibc's strerror() of any errno number. */
export function strerrorOfNumber(n: number): string {
  return GLIBC_STRERROR[n - 1] ?? `Unknown error ${n}`;
}

export class BlkioError extends Error {
  readonly code: Errno;
  /** Extra lines QEMU prints after the message (hints such as "Is another process using ..."). */
  readonly hints: string[];
  /** The errno number when it has no name here (blkdebug's `errno=N`); `code` is then EIO. */
  readonly unnamedErrno?: number;

  constructor(code: Errno, message?: string, hints: string[] = [], unnamedErrno?: number) {
    super(message ?? (unnamedErrno === undefined ? STRERROR[code] : strerrorOfNumber(unnamedErrno)));
    this.name = 'BlkioError';
    this.code = code;
    this.hints = hints;
    this.unnamedErrno = unnamedErrno;
  }

  /** The strerror() text of the code, as in `read failed: Input/output error`. */
  get strerror(): string {
    return this.unnamedErrno === undefined ? STRERROR[this.code] : strerrorOfNumber(this.unnamedErrno);
  }

  /** The errno number (positive), as QEMU's return values carry it. */
  get errnoNumber(): number {
    if (this.unnamedErrno !== undefined) return this.unnamedErrno;
    return Number(Object.keys(ERRNO_NUMBERS).find((n) => ERRNO_NUMBERS[Number(n)] === this.code) ?? 5);
  }

  /** A new error with the same code and a message prefixed the way QEMU's error_prepend does. */
  prepend(prefix: string): BlkioError {
    return new BlkioError(this.code, prefix + this.message, this.hints, this.unnamedErrno);
  }
}

/** The error of a raw errno number (> 0), named when blkio knows the name. */
export function errnoFromNumber(n: number): BlkioError {
  const code = ERRNO_NUMBERS[n];
  return code ? errno(code) : new BlkioError('EIO', undefined, [], n);
}

/** Shorthand: an error whose message is just the strerror text (a plain -errno in QEMU). */
export function errno(code: Errno): BlkioError {
  return new BlkioError(code);
}

/** QEMU's error_setg_errno: `<message>: <strerror>`, with the code of `e` (anything thrown). */
export function errnoError(message: string, e: unknown): BlkioError {
  const err = toBlkioError(e);
  return new BlkioError(err.code, `${message}: ${err.strerror}`);
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
