/**
 * cache.direct=on for the file protocol: the file is opened with O_DIRECT, as QEMU 7.2's
 * file-posix does on Linux, and the alignments the kernel then wants are found by trying reads.
 */
import { ioBuffer } from '../io-buffers.js';
import { BlkioError } from '../errors.js';

/** Sizes and buffer offsets tried, smallest first. */
const PROBE_ALIGNMENTS = [1, 512, 1024, 2048, 4096];
/** The largest alignment tried, also assumed when even 1 byte works (holes often read unaligned). */
const MAX_ALIGNMENT = 4096;

export interface DirectAlignment {
  /** Offsets and lengths of requests must be multiples of this. */
  request: number;
  /** Buffers passed to the kernel must start at a multiple of this in memory. */
  buffer: number;
}

/** Reads `buf` at offset 0 of the file; resolves false only when the kernel refused the alignment (EINVAL). */
export type ProbeRead = (buf: Uint8Array) => Promise<boolean>;

/**
 * The request alignment (the smallest read length at offset 0 that works), then the buffer
 * alignment (the smallest page offset of a buffer a MAX_ALIGNMENT read works with), as QEMU
 * probes them. Either working at 1 means the probe tells nothing: the request alignment is
 * then MAX_ALIGNMENT and the buffer alignment the request alignment.
 */
export async function probeDirectAlignment(read: ProbeRead): Promise<DirectAlignment> {
  const page = ioBuffer(2 * MAX_ALIGNMENT);
  const first = async (tryOne: (align: number) => Promise<boolean>) => {
    for (const align of PROBE_ALIGNMENTS) if (await tryOne(align)) return align;
    return 0;
  };
  const requestWorks = await first((size) => read(page.subarray(0, size)));
  const request = requestWorks === 1 ? MAX_ALIGNMENT : requestWorks;
  const bufferWorks = await first((shift) => read(page.subarray(shift, shift + MAX_ALIGNMENT)));
  const buffer = bufferWorks === 1 ? request : bufferWorks;
  if (!request || !buffer) {
    throw new BlkioError('EINVAL', 'Could not find working O_DIRECT alignment', ['Try cache.direct=off']);
  }
  return { request, buffer };
}
