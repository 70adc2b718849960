import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlkioError } from '../../../src/errors.js';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE, PERM_WRITE_UNCHANGED } from '../../../src/block/permissions.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { FileLock } from '../../../src/drivers/file-locks.js';

const dir = mkdtempSync(join(tmpdir(), 'blkio-locks-'));
const image = join(dir, 'disk.raw');
writeFileSync(image, Buffer.alloc(65536));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Each test its own pretend inode, so a failing test cannot leave locks behind for the next. */
let nextInode = 1;

function thrown(run: () => unknown): BlkioError {
  try {
    run();
  } catch (e) {
    return e as BlkioError;
  }
  throw new Error('expected a lock failure');
}

describe('FileLock (file-posix locking in one process)', () => {
  it('refuses a permission another file does not share, with the hint naming the image', () => {
    const ino = nextInode++;
    const a = new FileLock(1, ino, 'a.img');
    const b = new FileLock(1, ino, 'b.img');
    a.prepare(PERM_CONSISTENT_READ, PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED).commit();
    const e = thrown(() => b.prepare(PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL));
    expect(e.message).toBe('Failed to get "write" lock');
    expect(e.hints).toEqual(['Is another process using the image [b.img]?']);
    expect(e.code).toBe('EAGAIN');
    a.release();
    b.release();
  });

  it('refuses to unshare a permission another file holds, lowest permission first', () => {
    const ino = nextInode++;
    const a = new FileLock(1, ino, 'a.img');
    const b = new FileLock(1, ino, 'a.img');
    a.prepare(PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL).commit();
    expect(thrown(() => b.prepare(PERM_CONSISTENT_READ, PERM_CONSISTENT_READ)).message).toBe('Failed to get shared "write" lock');
    a.release();
    b.release();
  });

  it('never conflicts with itself, nor across devices or inodes', () => {
    const ino = nextInode++;
    const a = new FileLock(1, ino, 'a.img');
    const elsewhere = [new FileLock(2, ino, 'a.img'), new FileLock(1, nextInode++, 'a.img')];
    a.prepare(PERM_ALL, 0).commit();
    a.prepare(PERM_CONSISTENT_READ | PERM_WRITE, PERM_CONSISTENT_READ).commit();
    for (const other of elsewhere) other.prepare(PERM_ALL, 0).commit();
    for (const lock of [a, ...elsewhere]) lock.release();
  });

  it('lets a change that only drops locks through unchecked', () => {
    const ino = nextInode++;
    const a = new FileLock(1, ino, 'a.img');
    const b = new FileLock(1, ino, 'a.img');
    a.prepare(PERM_WRITE, PERM_ALL).commit();
    b.prepare(0, PERM_ALL).commit();
    // Both hold what conflicts only if one of them asks for more.
    a.prepare(0, PERM_ALL).commit();
    b.prepare(0, PERM_CONSISTENT_READ).commit();
    expect(thrown(() => a.prepare(PERM_WRITE, PERM_ALL)).message).toBe('Failed to get "write" lock');
    a.release();
    b.release();
  });

  it('shows prepared locks to the next file of the same update, and undoes them on abort', () => {
    const ino = nextInode++;
    const a = new FileLock(1, ino, 'a.img');
    const b = new FileLock(1, ino, 'a.img');
    const update = a.prepare(PERM_WRITE, PERM_CONSISTENT_READ);
    expect(thrown(() => b.prepare(PERM_WRITE, PERM_ALL)).message).toBe('Failed to get "write" lock');
    update.abort();
    b.prepare(PERM_WRITE, PERM_ALL).commit();
    a.release();
    b.release();
  });

  it('forgets a released file', () => {
    const ino = nextInode++;
    const a = new FileLock(1, ino, 'a.img');
    a.prepare(PERM_ALL, 0).commit();
    a.release();
    const b = new FileLock(1, ino, 'a.img');
    b.prepare(PERM_ALL, 0).commit();
    b.release();
  });
});

describe('file nodes take locks as their permissions change', () => {
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
