/**
 * Request buffers of qemu-io: filled with a byte (0xab for reads, the pattern for writes),
 * optionally misaligned (`-m`), filled cyclically from a file (`write -s`), and compared with
 * a pattern (`-P`). All filling and comparing is done natively, in large chunks.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { STRERROR, toBlkioError } from '../../errors.js';
import { ioBuffer } from '../../io-buffers.js';
import type { IoSession } from './session.js';

/** `-m` moves buffers this far into their allocation. */
const MISALIGN_OFFSET = 16;

/** Buffers from this size up are page-aligned, as QEMU's, and reused (smaller ones come from Node's shared pool). */
const REUSE_MIN = 1 << 20;
/**
 * Memory of a finished request, for the next one that fits: large requests in a row would
 * otherwise each take fresh memory, all held until the garbage collector runs.
 */
let spare: Uint8Array | undefined;
/** The page-aligned memory each large buffer lies in. */
const largeMemory = new WeakMap<ArrayBufferLike, Uint8Array>();

/** A buffer of `len` bytes, every byte `fill`. */
export function allocBuffer(session: IoSession, len: number, fill: number): Uint8Array {
  const skip = session.misalign ? MISALIGN_OFFSET : 0;
  const size = len + skip;
  let memory: Uint8Array;
  if (spare && spare.length >= size) {
    memory = spare.subarray(0, size);
    spare = undefined;
  } else if (size >= REUSE_MIN) {
    // O_DIRECT (cache.direct=on) takes such memory without a bounce buffer.
    memory = ioBuffer(size);
    largeMemory.set(memory.buffer, memory);
  } else {
    memory = Buffer.allocUnsafe(size);
  }
  return memory.fill(fill).subarray(skip);
}

/** Give back the buffer of a request that has finished and whose data nobody keeps. */
export function releaseBuffer(buf: Uint8Array): void {
  const memory = largeMemory.get(buf.buffer);
  if (memory && (!spare || memory.length > spare.length)) spare = memory;
}

/**
 * `write -s FILE`: the buffer holds the file's first `len` bytes, repeated until it is full.
 * Problems are printed like qemu-io does (`FILE: No such file or directory`,
 * `FILE: file is empty`) and give undefined.
 */
export function bufferFromFile(session: IoSession, file: string, len: number): Uint8Array | undefined {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (e) {
    session.printErr(`${file}: ${STRERROR[toBlkioError(e).code]}`);
    return undefined;
  }
  const buf = allocBuffer(session, len, 0);
  let loaded = 0;
  try {
    for (let n = -1; n !== 0 && loaded < len; loaded += n) n = readSync(fd, buf, loaded, len - loaded, null);
  } catch (e) {
    session.printErr(`${file}: ${STRERROR[toBlkioError(e).code]}`);
    return undefined;
  } finally {
    closeSync(fd);
  }
  if (loaded === 0) {
    session.printErr(`${file}: file is empty`);
    return undefined;
  }
  // Double the filled part until the buffer is full: log2(len / loaded) native copies.
  for (let filled = loaded; filled < len; filled *= 2) buf.copyWithin(filled, 0, Math.min(filled, len - filled));
  return buf;
}

const COMPARE_CHUNK = 1 << 20;

/** Whether every byte of `buf` equals `pattern`. */
export function matchesPattern(buf: Uint8Array, pattern: number): boolean {
  const reference = Buffer.alloc(Math.min(buf.length, COMPARE_CHUNK), pattern);
  for (let pos = 0; pos < buf.length; pos += reference.length) {
    const part = buf.subarray(pos, Math.min(pos + reference.length, buf.length));
    if (Buffer.compare(part, reference.subarray(0, part.length)) !== 0) return false;
  }
  return true;
}
