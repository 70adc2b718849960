/** Request flags (QEMU's BDRV_REQ_*): how a single read or write asks to be handled. */
export const REQ_COPY_ON_READ = 0x1;
export const REQ_ZERO_WRITE = 0x2;
export const REQ_MAY_UNMAP = 0x4;
export const REQ_FUA = 0x10;
export const REQ_WRITE_COMPRESSED = 0x20;
export const REQ_WRITE_UNCHANGED = 0x40;
export const REQ_SERIALISING = 0x80;
export const REQ_NO_FALLBACK = 0x100;
export const REQ_PREFETCH = 0x200;

/** Block-status bits (QEMU's BDRV_BLOCK_*). */
export const STATUS_DATA = 0x01;
export const STATUS_ZERO = 0x02;
export const STATUS_OFFSET_VALID = 0x04;
/** The driver passes the question on to `file` at `map` (raw and other thin layers). */
export const STATUS_RAW = 0x08;
export const STATUS_ALLOCATED = 0x10;
export const STATUS_EOF = 0x20;
/** Asked by a format of its data: is the host range below a hole? (see nodeBlockStatus) */
export const STATUS_RECURSE = 0x40;
export const STATUS_COMPRESSED = 0x80;

/** The largest single request (QEMU's BDRV_REQUEST_MAX_BYTES: INT_MAX rounded down to 512). */
export const REQUEST_MAX_BYTES = 2147483136;
/** Copy-on-read and zero-write fallbacks work in bounce buffers of at most this size. */
export const MAX_BOUNCE_BUFFER = 16 * 1024 * 1024;
