import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { BlkioError } from '../../../src/errors.js';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE, PERM_WRITE_UNCHANGED } from '../../../src/block/permissions.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { FileLock } from '../../../src/drivers/file-locks.js';
import { ADDON_PATH } from '../../../src/native-addon.js';

/** Which lock backend FileLock.open() picks: the addon's OFD locks, or the in-process table. */
const backend = vi.hoisted(() => ({ native: true }));
vi.mock('../../../src/native-addon.js', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../../../src/native-addon.js')>();
  return { ...actual, nativeAddon: () => (backend.native ? actual.nativeAddon() : undefined) };
});

// CI builds the addon (npm ci): there it must be tested; elsewhere a machine may lack a compiler.
const haveAddon =
  process.env.BLKIO_NO_NATIVE !== '1' && (existsSync(join(__dirname, '../../..', ADDON_PATH)) || process.env.CI === 'true');

const dir = mkdtempSync(join(tmpdir(), 'blkio-locks-'));
const image = join(dir, 'disk.raw');
writeFileSync(image, Buffer.alloc(65536));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Each test its own file, so a failing test cannot leave locks behind for the next. */
let nextFile = 1;
function newFile(): string {
  const path = join(dir, `f${nextFile++}.img`);
  writeFileSync(path, '');
  return path;
}

function lockOn(path: string): Promise<FileLock> {
  const { dev, ino } = statSync(path);
  return FileLock.open(path, dev, ino);
}

function thrown(run: () => unknown): BlkioError {
  try {
    run();
  } catch (e) {
    return e as BlkioError;
  }
  throw new Error('expected a lock failure');
}

/** A child process holding shared OFD locks on `bytes` of `path` until its stdin closes. */
async function lockInAnotherProcess(path: string, bytes: number[]): Promise<() => void> {
  const script = `
    const addon = require(${JSON.stringify(join(__dirname, '../../..', ADDON_PATH))});
    const fd = require('node:fs').openSync(${JSON.stringify(path)}, 'r');
    for (const byte of ${JSON.stringify(bytes)}) addon.ofdLock(fd, byte, true);
    process.stdout.write('locked');
    process.stdin.resume();`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise((resolve) => child.stdout.once('data', resolve));
  return () => child.stdin.end();
}

describe.runIf(haveAddon)('FileLock across processes', () => {
  beforeEach(() => {
    backend.native = true;
  });

  it('sees the locks of another process and leaves the file usable when they go', async () => {
    const file = newFile();
    // Another process writes (101) and does not share write (201).
    const unlock = await lockInAnotherProcess(file, [100, 101, 201]);
    const a = await lockOn(file);
    try {
      expect(thrown(() => a.prepare(PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL)).message).toBe('Failed to get "write" lock');
      const e = thrown(() => a.prepare(PERM_CONSISTENT_READ, PERM_CONSISTENT_READ));
      expect(e.message).toBe('Failed to get shared "write" lock');
      expect(e.hints).toEqual([`Is another process using the image [${file}]?`]);
      a.prepare(PERM_CONSISTENT_READ, PERM_ALL).commit();
    } finally {
      unlock();
    }
    await expect.poll(() => {
      try {
        a.prepare(PERM_ALL, 0).commit();
        return true;
      } catch {
        return false;
      }
    }).toBe(true);
    await a.release();
  });

  it('shows its own locks to another process, and drops them on release', async () => {
    const file = newFile();
    const a = await lockOn(file);
    a.prepare(PERM_CONSISTENT_READ | PERM_WRITE, PERM_CONSISTENT_READ).commit();
    const locks = () => execFileSync('cat', ['/proc/locks'], { encoding: 'utf8' });
    const ino = statSync(file).ino;
    const mine = () => locks().split('\n').filter((line) => line.includes('OFDLCK') && line.includes(`:${ino} `));
    expect(mine().map((line) => line.split(/\s+/).slice(-2).join('-')).sort()).toEqual(['100-101', '201-203']);
    await a.release();
    expect(mine()).toEqual([]);
  });
});

describe.each([
  { name: 'OFD locks', native: true, skip: !haveAddon },
  { name: 'the in-process table', native: false, skip: false },
])('FileLock with $name', ({ native, skip }) => {
  if (skip) return;
  beforeEach(() => {
    backend.native = native;
  });

  it('refuses a permission another file does not share, with the hint naming the image', async () => {
    const file = newFile();
    const a = await lockOn(file);
    const b = await lockOn(file);
    a.prepare(PERM_CONSISTENT_READ, PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED).commit();
    const e = thrown(() => b.prepare(PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL));
    expect(e.message).toBe('Failed to get "write" lock');
    expect(e.hints).toEqual([`Is another process using the image [${file}]?`]);
    expect(e.code).toBe('EAGAIN');
    await a.release();
    await b.release();
  });

  it('refuses to unshare a permission another file holds, lowest permission first', async () => {
    const file = newFile();
    const a = await lockOn(file);
    const b = await lockOn(file);
    a.prepare(PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL).commit();
    expect(thrown(() => b.prepare(PERM_CONSISTENT_READ, PERM_CONSISTENT_READ)).message).toBe('Failed to get shared "write" lock');
    await a.release();
    await b.release();
  });

  it('never conflicts with itself, nor across files', async () => {
    const a = await lockOn(newFile());
    const elsewhere = [await lockOn(newFile()), await lockOn(newFile())];
    a.prepare(PERM_ALL, 0).commit();
    a.prepare(PERM_CONSISTENT_READ | PERM_WRITE, PERM_CONSISTENT_READ).commit();
    for (const other of elsewhere) other.prepare(PERM_ALL, 0).commit();
    for (const lock of [a, ...elsewhere]) await lock.release();
  });

  it('lets a change that only drops locks through unchecked', async () => {
    const file = newFile();
    const a = await lockOn(file);
    const b = await lockOn(file);
    a.prepare(PERM_WRITE, PERM_ALL).commit();
    b.prepare(0, PERM_ALL).commit();
    // Both hold what conflicts only if one of them asks for more.
    a.prepare(0, PERM_ALL).commit();
    b.prepare(0, PERM_CONSISTENT_READ).commit();
    expect(thrown(() => a.prepare(PERM_WRITE, PERM_ALL)).message).toBe('Failed to get "write" lock');
    await a.release();
    await b.release();
  });

  it('shows prepared locks to the next file of the same update, and undoes them on abort', async () => {
    const file = newFile();
    const a = await lockOn(file);
    const b = await lockOn(file);
    const update = a.prepare(PERM_WRITE, PERM_CONSISTENT_READ);
    expect(thrown(() => b.prepare(PERM_WRITE, PERM_ALL)).message).toBe('Failed to get "write" lock');
    update.abort();
    b.prepare(PERM_WRITE, PERM_ALL).commit();
    await a.release();
    await b.release();
  });

  it('forgets a released file', async () => {
    const file = newFile();
    const a = await lockOn(file);
    a.prepare(PERM_ALL, 0).commit();
    await a.release();
    const b = await lockOn(file);
    b.prepare(PERM_ALL, 0).commit();
    await b.release();
  });
});

describe.each([
  { name: 'OFD locks', native: true, skip: !haveAddon },
  { name: 'the in-process table', native: false, skip: false },
])('file nodes take locks ($name) as their permissions change', ({ native, skip }) => {
  if (skip) return;
  beforeEach(() => {
    backend.native = native;
  });
  it('fails a second writer of a qcow2-like user and frees the file on close', async () => {
    const first = new BlockLayer(allDrivers);
    const second = new BlockLayer(allDrivers);
    try {
      const a = await first.openNode(undefined, { driver: 'file', filename: image });
      BlockBackend.attach(a, PERM_CONSISTENT_READ | PERM_WRITE, PERM_CONSISTENT_READ);
      const b = await second.openNode(undefined, { driver: 'file', filename: image });
      expect(() => BlockBackend.attach(b, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL)).toThrow('Failed to get "write" lock');
      // The failed attach changed nothing: b can still be used by a reader.
      BlockBackend.attach(b, PERM_CONSISTENT_READ, PERM_ALL);
      await first.closeAll();
      BlockBackend.attach(b, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    } finally {
      await first.closeAll();
      await second.closeAll();
    }
  });

  it('takes no locks with locking=off', async () => {
    const layer = new BlockLayer(allDrivers);
    try {
      const a = await layer.openNode(undefined, { driver: 'file', filename: image });
      BlockBackend.attach(a, PERM_ALL, 0);
      const b = await layer.openNode(undefined, { driver: 'file', filename: image, locking: 'off' });
      BlockBackend.attach(b, PERM_ALL, 0);
    } finally {
      await layer.closeAll();
    }
  });
});
