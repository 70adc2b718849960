/** The `file` protocol: a host file through an async file handle. Large requests pass straight through. */
import { open, type FileHandle } from 'node:fs/promises';
import { BlkioError, toBlkioError } from '../errors.js';
import type { BlockDriver } from '../block/driver.js';
import { REQ_FUA, REQ_NO_FALLBACK, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_ZERO } from '../block/flags.js';

interface FileState {
  handle: FileHandle;
  filename: string;
  size: number;
  noFlush: boolean;
}

async function readFully(handle: FileHandle, buf: Uint8Array, offset: number): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await handle.read(buf, done, buf.length - done, offset + done);
    if (bytesRead === 0) break;
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
  const zeroes = new Uint8Array(Math.min(end - offset, 1 << 20));
  for (let pos = offset; pos < end; pos += zeroes.length) {
    await writeFully(handle, zeroes.subarray(0, Math.min(zeroes.length, end - pos)), pos);
  }
}

export const fileDriver: BlockDriver<FileState> = {
  name: 'file',
  kind: 'protocol',
  protocolPrefix: 'file',
  options: {
    filename: { type: 'string' },
    aio: { type: 'enum', values: ['threads', 'native', 'io_uring'] },
    'aio-max-batch': { type: 'number' },
    locking: { type: 'enum', values: ['auto', 'on', 'off'] },
    'pr-manager': { type: 'string' },
    'x-check-cache-dropped': { type: 'bool' },
    'drop-cache': { type: 'bool' },
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

  async open(node, ctx) {
    const filename = ctx.opts.filename as string | undefined;
    if (!filename) throw new BlkioError('EINVAL', "The 'file' block driver requires a file name");
    let handle: FileHandle;
    try {
      handle = await open(filename, node.readOnly ? 'r' : 'r+');
    } catch (e) {
      throw new BlkioError(toBlkioError(e).code, `Could not open '${filename}': ${toBlkioError(e).strerror}`);
    }
    const stat = await handle.stat();
    if (stat.isDirectory()) {
      await handle.close();
      throw new BlkioError('EISDIR', `'${filename}' is not a file`);
    }
    node.filename = filename;
    return { handle, filename, size: stat.size, noFlush: node.openOptions['cache.no-flush'] === true };
  },

  async close(node) {
    await node.state.handle.close();
  },

  async reopen(node) {
    const handle = await open(node.state.filename, node.readOnly ? 'r' : 'r+').catch((e) => {
      throw toBlkioError(e);
    });
    await node.state.handle.close();
    node.state.handle = handle;
  },

  supportedWriteFlags: () => REQ_FUA,
  /** Zeroes inside the file are written like fallocate(ZERO_RANGE) would: no fallback is needed. */
  supportedZeroFlags: () => REQ_NO_FALLBACK,

  getLength: (node) => node.state.size,

  async allocatedSize(node) {
    const stat = await node.state.handle.stat();
    return stat.blocks * 512;
  },

  async read(node, offset, bytes, buf) {
    const got = await readFully(node.state.handle, buf.subarray(0, bytes), offset).catch((e) => {
      throw toBlkioError(e);
    });
    if (got < bytes) buf.fill(0, got, bytes);
  },

  async write(node, offset, bytes, buf, flags) {
    const s = node.state;
    await writeFully(s.handle, buf.subarray(0, bytes), offset).catch((e) => {
      throw toBlkioError(e);
    });
    if (offset + bytes > s.size) s.size = offset + bytes;
    if (flags & REQ_FUA && !s.noFlush) await s.handle.datasync();
  },

  /** Zeroes inside the file are written; past the end the file grows sparsely. */
  async writeZeroes(node, offset, bytes) {
    const s = node.state;
    if (offset < s.size) await writeZeroRange(s.handle, offset, Math.min(offset + bytes, s.size));
    if (offset + bytes > s.size) {
      await s.handle.truncate(offset + bytes);
      s.size = offset + bytes;
    }
  },

  /** Node cannot punch holes; discarded ranges read back as zeroes, as after QEMU's hole punch. */
  async discard(node, offset, bytes) {
    const s = node.state;
    const end = Math.min(offset + bytes, s.size);
    if (end === s.size && offset < end) {
      await s.handle.truncate(offset);
      await s.handle.truncate(s.size);
      return;
    }
    await writeZeroRange(s.handle, offset, end);
  },

  async flush(node) {
    if (!node.state.noFlush && !node.readOnly) await node.state.handle.datasync();
  },

  async truncate(node, size, _exact, prealloc) {
    if (prealloc !== 'off' && prealloc !== 'falloc' && prealloc !== 'full') {
      throw new BlkioError('ENOTSUP', `Unsupported preallocation mode: ${prealloc}`);
    }
    await node.state.handle.truncate(size);
    node.state.size = size;
  },

  async blockStatus(node, offset, bytes) {
    // Without SEEK_DATA we can only tell a file that has no blocks at all.
    const stat = await node.state.handle.stat();
    const status = stat.blocks === 0 ? STATUS_ZERO | STATUS_OFFSET_VALID : STATUS_DATA | STATUS_OFFSET_VALID;
    return { status, pnum: bytes, map: offset, file: node };
  },

  getInfo: () => ({}),

  describeOptions: (node) => ({ filename: node.state.filename }),
};
