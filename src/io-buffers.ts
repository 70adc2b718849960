/**
 * Large I/O buffers and the zero-sector scan over them, and the scan of a table for entries
 * that step evenly: native with blkio's addon (native/buffers.c), in JS without it.
 *
 * A buffer from `ioBuffer` starts on a page boundary, as QEMU's qemu_blockalign gives. malloc
 * puts large blocks 16 bytes past a page boundary, and the kernel copies between the page
 * cache and such a buffer at about half the speed (reads and writes of 1 GiB through 2 MiB
 * buffers: 0.67 s of system time against 0.34 s aligned).
 */
import { isZeroBuffer } from './block/io.js';
import { nativeAddon } from './native-addon.js';

/** The addon's buffer exports (native/buffers.c). */
interface BufferAddon {
  addressRemainder(buf: Uint8Array, modulus: number): number;
  sectorRunEnd(buf: Uint8Array, from: number, to: number, zero: boolean): number;
  /** Absent from an addon built before it. */
  steppedRunEnd?(buf: Uint8Array, from: number, to: number, step: number): number;
  /** Absent from an addon built before it. */
  fillSteppedRun?(buf: Uint8Array, from: number, to: number, hi: number, lo: number, step: number): void;
}

const PAGE = 4096;
const SECTOR = 512;

let loaded: { addon: BufferAddon | undefined } | undefined;

function bufferAddon(): BufferAddon | undefined {
  if (!loaded) {
    const addon = nativeAddon() as Partial<BufferAddon> | undefined;
    loaded = { addon: addon?.addressRemainder && addon.sectorRunEnd ? addon as BufferAddon : undefined };
  }
  return loaded.addon;
}

/** A zeroed buffer of `bytes` for file I/O, page-aligned when the addon can tell where it lies. */
export function ioBuffer(bytes: number): Uint8Array {
  const addon = bufferAddon();
  if (!addon) return new Uint8Array(bytes);
  // At least a page: V8 keeps such memory off its heap, where it never moves.
  const whole = new Uint8Array(bytes + PAGE);
  const start = (PAGE - addon.addressRemainder(whole, PAGE)) % PAGE;
  return whole.subarray(start, start + bytes);
}

/** Whether buffers can be aligned in memory (the addon alone can tell where they lie): O_DIRECT needs it. */
export function canAlignBuffers(): boolean {
  return bufferAddon() !== undefined;
}

/** Whether `buf` starts at a multiple of `alignment` in memory (true without the addon). */
export function isAlignedInMemory(buf: Uint8Array, alignment: number): boolean {
  return (bufferAddon()?.addressRemainder(buf, alignment) ?? 0) === 0;
}

/** Sectors compared at once while a zero run goes on (one native comparison per 64 KiB). */
const ZERO_SCAN_SECTORS = 128;

/** Whether sector i is all zero; its first or last byte usually shows data without a native call. */
function sectorIsZero(buf: Uint8Array, i: number): boolean {
  const start = i * SECTOR;
  if (buf[start] !== 0 || buf[start + SECTOR - 1] !== 0) return false;
  return isZeroBuffer(buf, start, start + SECTOR);
}

function zeroRunEnd(buf: Uint8Array, i: number, to: number): number {
  while (i < to) {
    const span = Math.min(ZERO_SCAN_SECTORS, to - i);
    if (!isZeroBuffer(buf, i * SECTOR, (i + span) * SECTOR)) break;
    i += span;
  }
  while (i < to && sectorIsZero(buf, i)) i++;
  return i;
}

function dataRunEnd(buf: Uint8Array, i: number, to: number): number {
  while (i < to && !sectorIsZero(buf, i)) i++;
  return i;
}

/**
 * The first 512-byte sector of `buf` in [from, to) that holds data (zero: true) or is all zero
 * (zero: false); `to` when the run lasts.
 */
export function sectorRunEnd(buf: Uint8Array, from: number, to: number, zero: boolean): number {
  const addon = bufferAddon();
  if (addon) return addon.sectorRunEnd(buf, from, to, zero);
  return zero ? zeroRunEnd(buf, from, to) : dataRunEnd(buf, from, to);
}

/**
 * The first big-endian 64-bit entry i in (from, to) of `buf` that is not entry `from` plus
 * (i - from) * `step` (`to` when there is none). qcow2's L2 scans use it: standard entries that
 * go on that way, each the next host cluster with the same flags, all map alike, and a JS loop
 * over thousands of them made V8 compile it (tens of ms) for each block status of a slice.
 */
export function steppedRunEnd(buf: Uint8Array, from: number, to: number, step: number): number {
  const addon = bufferAddon();
  if (addon?.steppedRunEnd) return addon.steppedRunEnd(buf, from, to, step);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const hi = view.getUint32(from * 8);
  const lo = view.getUint32(from * 8 + 4);
  let i = from + 1;
  for (; i < to; i++) {
    // lo + k * step stays a safe integer: k * step is below 2^53 for any table in memory.
    const sum = lo + (i - from) * step;
    if (view.getUint32(i * 8 + 4) !== sum % 2 ** 32 || view.getUint32(i * 8) !== (hi + Math.floor(sum / 2 ** 32)) % 2 ** 32) break;
  }
  return i;
}

/**
 * Set the big-endian 64-bit entries [from, to) of `buf` to (hi * 2^32 + lo) + (i - from) * `step`
 * (hi and lo 32-bit words, the sum not carrying past bit 63). qcow2 points new L2 entries at
 * their clusters with it: the JS loop over a 1 GiB copy's 16 384 entries was the one function V8
 * optimised in a run of 16 MiB writes, and that compilation alone touched 3.5 MiB of its code.
 */
export function fillSteppedRun(buf: Uint8Array, from: number, to: number, hi: number, lo: number, step: number): void {
  const addon = bufferAddon();
  if (addon?.fillSteppedRun) {
    addon.fillSteppedRun(buf, from, to, hi, lo, step);
    return;
  }
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let i = from; i < to; i++) {
    // lo + k * step stays a safe integer, as in steppedRunEnd.
    const sum = lo + (i - from) * step;
    view.setUint32(i * 8, (hi + Math.floor(sum / 2 ** 32)) % 2 ** 32);
    view.setUint32(i * 8 + 4, sum % 2 ** 32);
  }
}
