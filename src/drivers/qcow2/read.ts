/**
 * Guest reads: walk the mappings, zero-fill zero and (without backing) unallocated ranges,
 * read unallocated ranges from the backing child, decompress compressed clusters, and read
 * data from the file in runs as large as the host layout allows, several at a time.
 */
import { debugEvent } from '../../block/io.js';
import { readCompressed } from './compressed.js';
import { decryptData } from './crypto.js';
import { getHostOffset, SubclusterType } from './mapping.js';
import { offsetIntoCluster, type Qcow2State } from './state.js';

/** Host reads in flight at once (QEMU runs up to 8 request workers). */
const MAX_PARALLEL = 8;

/**
 * Read guest bytes `[offset, offset + bytes)` into `buf`. Also used for COW regions, which may
 * extend past the virtual size up to the end of the last cluster.
 */
export async function readGuest(s: Qcow2State, offset: number, bytes: number, buf: Uint8Array): Promise<void> {
  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  const start = (p: Promise<void>): void => {
    const tracked = p.catch((e) => {
      failure ??= e;
    }).finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
  };
  // A run of data contiguous in both guest and host space, read with one request.
  let run: { guest: number; host: number; bytes: number } | undefined;
  const flushRun = (): void => {
    if (!run) return;
    const { guest, host, bytes: n } = run;
    debugEvent(s.file.node, 'read_aio');
    const dest = buf.subarray(guest - offset, guest - offset + n);
    const encryption = s.encryption;
    const read = s.dataFile.read(host, n, dest);
    start(encryption ? read.then(() => decryptData(encryption, dest, guest, host)) : read);
    run = undefined;
  };

  let pos = offset;
  const end = offset + bytes;
  while (pos < end && failure === undefined) {
    const m = await s.lock.run(() => getHostOffset(s, pos, end - pos));
    const n = m.bytes;
    const dest = buf.subarray(pos - offset, pos - offset + n);
    const backing = s.node?.backing;
    switch (m.type) {
      case SubclusterType.Normal:
        if (run && run.guest + run.bytes === pos && run.host + run.bytes === m.hostOffset) {
          run.bytes += n;
        } else {
          flushRun();
          run = { guest: pos, host: m.hostOffset, bytes: n };
        }
        break;
      case SubclusterType.Compressed:
        flushRun();
        start(readCompressed(s, m.entry, offsetIntoCluster(s, pos), n, dest));
        break;
      case SubclusterType.UnallocatedPlain:
      case SubclusterType.UnallocatedAlloc:
        if (backing) {
          flushRun();
          debugEvent(s.file.node, 'read_backing_aio');
          start(backing.read(pos, n, dest));
          break;
        }
        dest.fill(0);
        break;
      default:
        dest.fill(0);
    }
    pos += n;
    while (inFlight.size >= MAX_PARALLEL) await Promise.race(inFlight);
  }
  flushRun();
  await Promise.all(inFlight);
  if (failure !== undefined) throw failure;
}
