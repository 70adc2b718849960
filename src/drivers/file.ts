/** The `file` protocol: a host file through an async file handle. Large requests pass straight through. */
import { constants, statSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { BlkioError, errno, errnoError, toBlkioError } from '../errors.js';
import type { BlockDriver } from '../block/driver.js';
import type { OpenContext } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQ_ZERO_WRITE, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_ZERO } from '../block/flags.js';
import { nativeFileOps, type NativeFileOps } from './file-native.js';
import { FileLock } from './file-locks.js';
import { canAlignBuffers, ioBuffer, isAlignedInMemory } from '../io-buffers.js';
import { probeDirectAlignment, type DirectAlignment } from './file-direct.js';
import { hostPath } from '../byte-strings.js';
import { checkPreallocationOption } from './raw.js';

interface FileState {
  handle: FileHandle;
  filename: string;
  size: number;
  /** The image locks of this node (none with `locking=off`). */
  lock?: FileLock;
  /** With cache.direct=on: the file is opened with O_DIRECT, which wants these alignments. */
  direct?: DirectAlignment;
}

/** open(2) flags of a node's file. */
function openFlags(readOnly: boolean, direct: boolean): number {
  return (readOnly ? constants.O_RDONLY : constants.O_RDWR) | (direct ? constants.O_DIRECT : 0);
}

/** Whether the kernel takes a read of `buf` at offset 0: only EINVAL says an O_DIRECT alignment is wrong. */
function probeRead(handle: FileHandle): (buf: Uint8Array) => Promise<boolean> {
  return (buf) => handle.read(buf, 0, buf.length, 0).then(() => true, (e: NodeJS.ErrnoException) => e.code !== 'EINVAL');
}

/** `buf`, or an aligned copy of it where O_DIRECT wants buffers aligned beyond where it lies. */
function kernelBuffer(s: FileState, buf: Uint8Array): Uint8Array {
  if (!s.direct || isAlignedInMemory(buf, s.direct.buffer)) return buf;
  const copy = ioBuffer(buf.length);
  copy.set(buf);
  return copy;
}

async function readFully(handle: FileHandle, buf: Uint8Array, offset: number): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await handle.read(buf, done, buf.length - done, offset + done);
    // Regular files read short only at their end (where O_DIRECT could not read on, unaligned).
    if (bytesRead < buf.length - done) {
      done += bytesRead;
      break;
    }
    done += bytesRead;
  }
  return done;
}

async function writeFully(handle: FileHandle, buf: Uint8Array, offset: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await handle.write(buf, done, buf.length - done, offset + done);
    done += bytesWritten;
  }
}

/** Zeroes over [offset, end) of the file, written in chunks of at most 1 MiB. */
async function writeZeroRange(handle: FileHandle, offset: number, end: number): Promise<void> {
  const zeroes = ioBuffer(Math.min(end - offset, 1 << 20));
  for (let pos = offset; pos < end; pos += zeroes.length) {
    await writeFully(handle, zeroes.subarray(0, Math.min(zeroes.length, end - pos)), pos);
  }
}

/** Whether `promise` settled fine (true) or failed with one of `codes` (false); other errors pass. */
async function succeeds(promise: Promise<void>, codes: readonly string[]): Promise<boolean> {
  try {
    await promise;
    return true;
  } catch (e) {
    if (e instanceof BlkioError && codes.includes(e.code)) return false;
    throw e;
  }
}

/**
 * Zero [offset, offset+bytes) of a file of `size` bytes without writing data: a hole where
 * unmapping is allowed, else ZERO_RANGE, else a hole allocated anew (file systems without
 * ZERO_RANGE). Past the end the file grows by fallocate, never by truncate, which could cut
 * off a concurrent write beyond. ENOTSUP when the file system can do none of these.
 */
async function fallocateZeroes(ops: NativeFileOps, fd: number, size: number, offset: number, bytes: number, unmap: boolean): Promise<void> {
  let inside = Math.min(offset + bytes, size) - offset;
  if (unmap && inside > 0 && (await succeeds(ops.punchHole(fd, offset, inside), ['ENOTSUP', 'EINVAL', 'EBUSY']))) {
    offset += inside;
    bytes -= inside;
    inside = 0;
    if (bytes === 0) return;
  }
  if (await succeeds(ops.zeroRange(fd, offset, bytes), ['ENOTSUP', 'EINVAL'])) return;
  if (inside > 0) await ops.punchHole(fd, offset, inside);
  await ops.allocate(fd, offset, bytes);
}

/** Preallocation modes of the file protocol (`metadata` is a format's business). */
const PREALLOC_MODES = ['off', 'falloc', 'full'];

/**
 * Write the first block of a file that was empty, as QEMU does when it sizes a new file: file
 * systems then report a real alignment for it. Failures do not matter.
 */
async function allocateFirstBlock(handle: FileHandle, size: number): Promise<void> {
  await writeFully(handle, ioBuffer(size < 4096 ? 512 : 4096), 0).catch(() => undefined);
}

/**
 * Set the file's size, preallocating a grown part as `prealloc` says ('off', 'falloc' or 'full').
 * Sizes are refused as ftruncate and fallocate refuse them: creation sizes a new file here
 * without the generic truncate's checks.
 */
async function resizeFile(s: FileState, size: number, prealloc: string): Promise<void> {
  const { handle } = s;
  const current = (await handle.stat()).size;
  // The kernel's off_t is signed: from 2^63 up a size is negative.
  const negative = size >= 2 ** 63;
  if (prealloc !== 'off' && (negative || size < current)) {
    throw new BlkioError('ENOTSUP', 'Cannot use preallocation for shrinking files');
  }
  if (!PREALLOC_MODES.includes(prealloc)) {
    throw new BlkioError('ENOTSUP', `Unsupported preallocation mode: ${prealloc}`);
  }
  const failureText = prealloc === 'falloc' ? 'Could not preallocate new data' : 'Could not resize file';
  if (negative) throw errnoError(failureText, errno('EINVAL'));
  // Node takes lengths up to 2^53 only; file systems that hold more are rare.
  if (!Number.isSafeInteger(size)) throw errnoError(failureText, errno('EFBIG'));
  // A failed preallocation leaves the file as it was.
  const step = async (what: string, action: () => Promise<void>) => {
    try {
      await action();
    } catch (e) {
      await handle.truncate(current).catch(() => undefined);
      throw errnoError(what, e);
    }
  };
  if (prealloc === 'full') {
    await step('Could not resize file', () => handle.truncate(size));
    await step('Could not write zeros for preallocation', () => writeZeroRange(handle, current, size));
    await step('Could not flush file to disk', () => handle.sync());
  } else if (prealloc === 'falloc' && size > current) {
    // Without the addon, or fallocate in the file system, the new part stays sparse: it reads
    // as zeroes all the same.
    const ops = nativeFileOps();
    await step('Could not preallocate new data', async () => {
      if (!ops || !(await succeeds(ops.allocate(handle.fd, current, size - current), ['ENOTSUP']))) {
        await handle.truncate(size);
      }
    });
  } else if (prealloc === 'off') {
    await handle.truncate(size).catch((e: unknown) => {
      throw errnoError('Could not resize file', e);
    });
  }
  if (current === 0 && size > 0 && prealloc !== 'full') await allocateFirstBlock(handle, size);
  // The first block can make a tiny file longer than asked, as in QEMU.
  s.size = (await handle.stat()).size;
}

/**
 * A regular file's size as QEMU takes it once the file is open, with lseek(SEEK_END) where the
 * addon can: files in /proc (sized 0 by stat) refuse it. Without the addon, stat's size.
 */
async function regularFileSize(handle: FileHandle, statSize: number, device: boolean): Promise<number> {
  const ops = nativeFileOps();
  if (device || !ops) return statSize;
  return ops.seekEnd(handle.fd).catch((e: unknown) => {
    throw errnoError('Could not refresh total sector count', e);
  });
}

/** The file and host_device drivers' open: a regular file, or a character or block device. */
async function openHostFile(node: BlockNode<FileState>, ctx: OpenContext, device: boolean): Promise<FileState> {
  const filename = ctx.opts.filename as string;
  const prManager = ctx.opts['pr-manager'] as string | undefined;
  if (prManager !== undefined) {
    // blkio has no persistent reservation managers: the id names none, or another object.
    throw new BlkioError('EINVAL', ctx.layer.objects.has(prManager)
      ? `Object with id '${prManager}' is not a persistent reservation manager`
      : `No persistent reservation manager with id '${prManager}'`);
  }
  // O_DIRECT wants aligned buffers, which only the addon can give: without it the page cache stays.
  const direct = ctx.flag('cache.direct') && canAlignBuffers();
  let handle: FileHandle;
  try {
    handle = await open(hostPath(filename), openFlags(node.readOnly, direct));
  } catch (e) {
    throw errnoError(`Could not open '${filename}'`, e);
  }
  let lock: FileLock | undefined;
  try {
    const stat = await handle.stat();
    if (device ? !stat.isCharacterDevice() && !stat.isBlockDevice() : !stat.isFile()) {
      throw new BlkioError('EINVAL', device
        ? `'${node.driver.name}' driver requires '${filename}' to be either a character or block device`
        : `'file' driver requires '${filename}' to be a regular file`);
    }
    // Linux native AIO works only on files opened with O_DIRECT.
    if (ctx.opts.aio === 'native' && !ctx.flag('cache.direct')) {
      throw new BlkioError('EINVAL', 'aio=native was specified, but it requires cache.direct=on, which was not specified.');
    }
    node.filename = filename;
    if (ctx.opts.locking !== 'off') lock = await FileLock.open(filename, stat.dev, stat.ino);
    const size = await regularFileSize(handle, stat.size, device);
    const alignment = direct ? await probeDirectAlignment(probeRead(handle)) : undefined;
    return { handle, filename, size, lock, direct: alignment };
  } catch (e) {
    await lock?.release();
    await handle.close();
    throw e;
  }
}

export const fileDriver: BlockDriver<FileState> = {
  name: 'file',
  kind: 'protocol',
  protocolPrefix: 'file',
  needsFilename: true,
  options: {
    filename: { type: 'string' },
    aio: { type: 'enum', values: ['threads', 'native', 'io_uring'] },
    'aio-max-batch': { type: 'number' },
    locking: { type: 'enum', values: ['auto', 'on', 'off'] },
    'pr-manager': { type: 'string' },
    'x-check-cache-dropped': { type: 'bool' },
    'drop-cache': { type: 'bool' },
  },

  checkCreateOptions(request) {
    checkPreallocationOption(request.options);
    // The hint goes to the kernel as 32 bits.
    if (Number(request.options.extent_size_hint ?? 0) > 0xffffffff) throw new BlkioError('EINVAL', 'Extent size hint is too large');
  },

  /** The file protocol's creation: `file` is the new file's own node, sized here as QEMU sizes a new file. */
  async create(file, request) {
    await resizeFile(file.node.state as FileState, request.size, String(request.options.preallocation ?? 'off'));
  },

  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'nocow', type: 'bool', help: 'Turn off copy-on-write (valid only on btrfs)' },
    { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, falloc, full)' },
    { name: 'extent_size_hint', type: 'size', help: 'Extent size hint for the image file, 0 to disable' },
  ],

  parseFilename(filename, options) {
    options.filename = filename.startsWith('file:') ? filename.slice(5) : filename;
  },

  open: (node, ctx) => openHostFile(node, ctx, false),

  async close(node) {
    await node.state.lock?.release();
    await node.state.handle.close();
  },

  /**
   * The alignment is probed again on the file as it was open, as QEMU 7.2 does: coming from the
   * page cache, every probe read works and the alignments are 4096.
   */
  async setCacheDirect(node, direct) {
    const s = node.state;
    // Without a change QEMU keeps its descriptor (a file deleted since opening stays usable).
    if (direct === (s.direct !== undefined) || (direct && !canAlignBuffers())) return;
    const alignment = direct ? await probeDirectAlignment(probeRead(s.handle)) : undefined;
    const handle = await open(hostPath(s.filename), openFlags(node.readOnly, direct)).catch((e) => {
      throw toBlkioError(e).prepend(`Could not open '${s.filename}': `);
    });
    await s.handle.close();
    s.handle = handle;
    s.direct = alignment;
  },

  preparePermissions: (node, perm, shared) => node.state.lock?.prepare(perm, shared),

  async reopen(node) {
    const handle = await open(hostPath(node.state.filename), openFlags(node.readOnly, node.state.direct !== undefined)).catch((e) => {
      throw toBlkioError(e).prepend(`Could not open '${node.state.filename}': `);
    });
    await node.state.handle.close();
    node.state.handle = handle;
  },

  /**
   * No FUA, as in QEMU 7.2's file-posix: the generic layer flushes instead, which syncs only
   * when an earlier write is still unflushed (observable through blkdebug's flush errors).
   * With the native addon zeroes are fallocate()d, holes when unmapping is allowed. Without it
   * they are written here, as fallocate(ZERO_RANGE) would leave them: no fallback is needed.
   */
  // A grown file reads as zeroes.
  supportedTruncateFlags: () => REQ_ZERO_WRITE,
  supportedZeroFlags: () => (nativeFileOps() ? REQ_MAY_UNMAP | REQ_NO_FALLBACK : REQ_NO_FALLBACK),

  getLength: (node) => node.state.size,

  refreshLimits(node) {
    node.limits.requestAlignment = node.state.direct?.request ?? 1;
  },

  async allocatedSize(node) {
    const stat = await node.state.handle.stat();
    return stat.blocks * 512;
  },

  async read(node, offset, bytes, buf) {
    const wanted = buf.subarray(0, bytes);
    const target = kernelBuffer(node.state, wanted);
    const got = await readFully(node.state.handle, target, offset).catch((e) => {
      throw toBlkioError(e);
    });
    if (target !== wanted) buf.set(target.subarray(0, got));
    if (got < bytes) buf.fill(0, got, bytes);
  },

  async write(node, offset, bytes, buf) {
    const s = node.state;
    // Grow the recorded size before the write is issued, so that no concurrent request sees
    // a stale end of file while this one is in flight.
    if (offset + bytes > s.size) s.size = offset + bytes;
    await writeFully(s.handle, kernelBuffer(s, buf.subarray(0, bytes)), offset).catch((e) => {
      throw toBlkioError(e);
    });
  },

  /** Zeroes inside the file are fallocate()d (without the addon: written); past the end the file grows. */
  async writeZeroes(node, offset, bytes, flags) {
    const s = node.state;
    const ops = nativeFileOps();
    const size = s.size;
    // Grow the recorded size first, as write() does, for requests running meanwhile.
    s.size = Math.max(s.size, offset + bytes);
    if (ops) {
      await fallocateZeroes(ops, s.handle.fd, size, offset, bytes, (flags & REQ_MAY_UNMAP) !== 0);
    } else {
      // Written, never truncated: a truncate could race with a write that grows the file.
      await writeZeroRange(s.handle, offset, offset + bytes);
    }
  },

  /**
   * A hole is punched (as QEMU's discard=unmap); a file system that cannot keeps the data, as a
   * discard is only advice. Without the addon the range is zeroed.
   */
  async discard(node, offset, bytes) {
    const s = node.state;
    const end = Math.min(offset + bytes, s.size);
    if (end <= offset) return;
    const ops = nativeFileOps();
    if (ops) {
      await succeeds(ops.punchHole(s.handle.fd, offset, end - offset), ['ENOTSUP']);
    } else {
      await writeZeroRange(s.handle, offset, end);
    }
  },

  flushToDisk: (node) => node.state.handle.datasync(),

  truncate: (node, size, _exact, prealloc) => resizeFile(node.state, size, prealloc),

  /** Holes read as zeroes; data runs to the next hole. The host offset is the guest offset. */
  async blockStatus(node, offset, bytes, wantZero) {
    // Holes cost a system call to find: a quick question takes everything as data, as QEMU.
    if (!wantZero) return { status: STATUS_DATA | STATUS_OFFSET_VALID, pnum: bytes, map: offset, file: node };
    const ops = nativeFileOps();
    let zero: boolean;
    let pnum = bytes;
    if (ops) {
      const extent = await ops.extentAt(node.state.handle.fd, offset);
      zero = extent.zero;
      pnum = Math.min(bytes, extent.end - offset);
    } else {
      // Without SEEK_DATA we can only tell a file that has no blocks at all.
      zero = (await node.state.handle.stat()).blocks === 0;
    }
    return { status: (zero ? STATUS_ZERO : STATUS_DATA) | STATUS_OFFSET_VALID, pnum, map: offset, file: node };
  },

  getInfo: () => ({}),

  describeOptions: (node) => ({ filename: node.state.filename }),
};

/**
 * `host_device`: the file driver for character and block devices. A plain filename naming a
 * device (or starting with /dev/cdrom) opens with it, as QEMU's device probing does.
 */
export const hostDeviceDriver: BlockDriver<FileState> = {
  ...fileDriver,
  name: 'host_device',
  protocolPrefix: undefined,
  createOptions: undefined,
  checkCreateOptions: undefined,
  create: undefined,
  parseFilename: (filename, options) => withoutPrefix('host_device', filename, options),
  probeDevice(filename) {
    if (filename.startsWith('/dev/cdrom')) return 50;
    try {
      const stat = statSync(hostPath(filename));
      return stat.isCharacterDevice() || stat.isBlockDevice() ? 100 : 0;
    } catch {
      return 0;
    }
  },
  open: (node, ctx) => openHostFile(node, ctx, true),
  /** A device keeps its size: only a shrink that need not be exact "succeeds". */
  async truncate(node, size, exact, prealloc) {
    if (prealloc !== 'off') throw new BlkioError('ENOTSUP', `Preallocation mode '${prealloc}' unsupported for this non-regular file`);
    if (size !== node.state.size && exact) throw new BlkioError('ENOTSUP', 'Cannot resize device files');
    if (size > node.state.size) throw new BlkioError('EINVAL', 'Cannot grow device files');
  },
};

/**
 * `host_cdrom`: host_device for CD-ROM drives, whose medium may be missing. Node cannot ask a
 * drive (QEMU's CDROM_DRIVE_STATUS ioctl), so there is never a medium: requests, the length and
 * flushes fail with ENOMEDIUM, as on a device that is no CD-ROM drive (QEMU's answer for
 * /dev/null). Plain names under /dev/cd or /dev/acd probe as it, after host_device's /dev/cdrom.
 */
export const hostCdromDriver: BlockDriver<FileState> = {
  ...hostDeviceDriver,
  name: 'host_cdrom',
  protocolPrefix: 'host_cdrom',
  getInfo: undefined,
  parseFilename: (filename, options) => withoutPrefix('host_cdrom', filename, options),
  probeDevice: (filename) => (CDROM_PATHS.some((path) => filename.startsWith(path)) ? 50 : 0),
  isInserted: () => false,
};

/** Device paths QEMU takes for CD-ROM drives when it probes a plain filename. */
const CDROM_PATHS = ['/dev/cd', '/dev/acd'];

/** A device driver's filename, without its `driver:` prefix if it has one. */
function withoutPrefix(driver: string, filename: string, options: Record<string, unknown>): void {
  options.filename = filename.startsWith(`${driver}:`) ? filename.slice(driver.length + 1) : filename;
}
