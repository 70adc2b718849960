/** The native addon's wrapper: extents, fallocate modes, errno mapping, and the quiet fallback. */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm, type FileHandle } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ADDON_PATH, nativeFileOps } from '../../../src/drivers/file-native.js';
import { BlkioError } from '../../../src/errors.js';

const K = 1024;
const M = 1024 * K;
const addonFile = join(__dirname, '../../..', ADDON_PATH);
// CI builds the addon (npm ci): there it must be tested; elsewhere a machine may lack a compiler.
const haveAddon = existsSync(addonFile) || process.env.CI === 'true';

describe.runIf(haveAddon)('native file helpers', () => {
  const ops = nativeFileOps()!;
  let dir: string;
  let fh: FileHandle;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blkio-native-'));
    fh = await open(join(dir, 'f'), 'w+');
  });
  afterEach(async () => {
    await fh.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('loads', () => {
    expect(ops).toBeDefined();
  });

  it('finds data and holes, and a trailing hole that lasts', async () => {
    await fh.truncate(4 * M);
    await fh.write(new Uint8Array(M).fill(1), 0, M, M);
    expect(await ops.extentAt(fh.fd, 0)).toEqual({ zero: true, end: M });
    expect(await ops.extentAt(fh.fd, M + 5)).toEqual({ zero: false, end: 2 * M });
    expect(await ops.extentAt(fh.fd, 3 * M)).toEqual({ zero: true, end: Infinity });
    expect(await ops.extentAt(fh.fd, 8 * M)).toEqual({ zero: true, end: Infinity });
  });

  it('seeks to the end of a file, and fails as the kernel does for files in /proc', async () => {
    await fh.truncate(3 * M + 5);
    expect(await ops.seekEnd(fh.fd)).toBe(3 * M + 5);
    const proc = await open('/proc/version', 'r');
    try {
      await expect(ops.seekEnd(proc.fd)).rejects.toMatchObject({ code: 'EINVAL' });
    } finally {
      await proc.close();
    }
  });

  it('takes an fd without SEEK_DATA (a FIFO) as all data', async () => {
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const pipe = await open(fifo, 'r+');
    try {
      expect(await ops.extentAt(pipe.fd, 0)).toEqual({ zero: false, end: Infinity });
      // ...and fallocate on it fails with the errno of the call, as a BlkioError.
      await expect(ops.allocate(pipe.fd, 0, 4096)).rejects.toMatchObject({ code: 'ESPIPE', message: 'Illegal seek' });
    } finally {
      await pipe.close();
    }
  });

  it('punches holes inside the file, zeroes and allocates beyond its end', async () => {
    await fh.write(new Uint8Array(M).fill(2), 0, M, 0);
    await ops.punchHole(fh.fd, 64 * K, 64 * K);
    expect((await fh.stat()).size).toBe(M);
    expect(await ops.extentAt(fh.fd, 64 * K)).toEqual({ zero: true, end: 128 * K });
    const back = new Uint8Array(192 * K);
    await fh.read(back, 0, back.length, 0);
    expect(back.subarray(64 * K, 128 * K).every((b) => b === 0)).toBe(true);
    expect(back[64 * K - 1]).toBe(2);
    expect(back[128 * K]).toBe(2);

    await ops.zeroRange(fh.fd, M - 4 * K, 12 * K);
    expect((await fh.stat()).size).toBe(M + 8 * K);
    const before = (await fh.stat()).blocks;
    await ops.allocate(fh.fd, 2 * M, M);
    expect((await fh.stat()).size).toBe(3 * M);
    expect((await fh.stat()).blocks - before).toBeGreaterThanOrEqual((M / 512));
  });

  it('maps errnos to BlkioErrors: a read-only fd, and "not supported" for devices', async () => {
    const ro = await open(join(dir, 'f'), 'r');
    try {
      const e = await ops.punchHole(ro.fd, 0, 4096).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(BlkioError);
      expect(e).toMatchObject({ code: 'EBADF', message: 'Bad file descriptor' });
    } finally {
      await ro.close();
    }
    const dev = await open('/dev/null', 'r+');
    try {
      await expect(ops.zeroRange(dev.fd, 0, 4096)).rejects.toMatchObject({ code: 'ENOTSUP' });
    } finally {
      await dev.close();
    }
  });

  it('answers asynchronously and checks its arguments', async () => {
    const addon = createRequire(import.meta.url)(addonFile) as {
      lseek: (...args: unknown[]) => Promise<number>;
      fallocate: (...args: unknown[]) => Promise<void>;
      SEEK_DATA: number;
    };
    const pending = addon.lseek(fh.fd, 0, addon.SEEK_DATA);
    expect(pending).toBeInstanceOf(Promise);
    await pending.catch(() => undefined);
    expect(() => addon.lseek(fh.fd, 'x', addon.SEEK_DATA)).toThrow(new TypeError('offset must be an integer'));
    expect(() => addon.fallocate(fh.fd, 0, 1.5, 1)).toThrow(new TypeError('offset must be an integer'));
    expect(() => addon.fallocate(fh.fd, 0, 0)).toThrow(new TypeError('missing arguments'));
    expect(() => addon.lseek(fh.fd, 2 ** 60, addon.SEEK_DATA)).toThrow(TypeError);
  });
});

describe('without the addon', () => {
  afterEach(() => {
    vi.unstubAllEnvs();
  });

  it('BLKIO_NO_NATIVE=1 turns it off, quietly', async () => {
    vi.stubEnv('BLKIO_NO_NATIVE', '1');
    vi.resetModules();
    const warn = vi.spyOn(console, 'warn');
    const error = vi.spyOn(console, 'error');
    const fresh = await import('../../../src/drivers/file-native.js');
    expect(fresh.nativeFileOps()).toBeUndefined();
    expect(warn).not.toHaveBeenCalled();
    expect(error).not.toHaveBeenCalled();
  });

  it('a missing or broken addon reads as no addon, quietly', async () => {
    vi.resetModules();
    vi.doMock('node:module', async (original) => ({
      ...(await original<typeof import('node:module')>()),
      createRequire: () => () => {
        throw new Error("Cannot find module 'blkio_native.node'");
      },
    }));
    const warn = vi.spyOn(console, 'warn');
    try {
      const fresh = await import('../../../src/drivers/file-native.js');
      expect(fresh.nativeFileOps()).toBeUndefined();
      expect(warn).not.toHaveBeenCalled();
    } finally {
      vi.doUnmock('node:module');
    }
  });
});
