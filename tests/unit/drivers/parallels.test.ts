import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { parallelsDriver } from '../../../src/drivers/parallels.js';
import type { BlockBackend } from '../../../src/block/backend.js';
import { createImage, withImage } from './image-helpers.js';
import { haveQemu, qemuImg, qemuIo, tempDir } from './qcow2/helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());

function openParallels(name: string, options: Record<string, string>, use: (blk: BlockBackend) => Promise<void>): Promise<void> {
  return withImage('parallels', name, use, options);
}
const INUSE_OFFSET = 44;

describe('parallels', () => {
  it('refuses to open an image in use read-write, and opens it read-only', async () => {
    const name = tmp.path('inuse.parallels');
    await createImage(parallelsDriver, name, 1 << 20, { cluster_size: 65536 });
    const bytes = readFileSync(name);
    bytes.writeUInt32LE(0x746f6e59, INUSE_OFFSET);
    writeFileSync(name, bytes);
    await expect(openParallels(name, {}, async () => {})).rejects.toThrow(
      'parallels: Image was not closed correctly; cannot be opened read/write',
    );
    await openParallels(name, { 'read-only': 'on' }, async (blk) => {
      expect(blk.getLength()).toBe(1 << 20);
    });
  });

  it('marks the image in use while open read-write and cuts the preallocation at close', async () => {
    const name = tmp.path('mark.parallels');
    await createImage(parallelsDriver, name, 1 << 20, { cluster_size: 65536 });
    await openParallels(name, {}, async (blk) => {
      await blk.write(0, 4096, new Uint8Array(4096).fill(1));
      expect(readFileSync(name).readUInt32LE(INUSE_OFFSET)).toBe(0x746f6e59);
      // The default step of 128 MiB was written as zeroes after the new cluster.
      expect(readFileSync(name).length).toBeGreaterThan(128 << 20);
    });
    const after = readFileSync(name);
    expect(after.readUInt32LE(INUSE_OFFSET)).toBe(0);
    expect(after.length).toBe(2 * 65536);
  });
});

describe('parallels with a BAT shorter than the disk', () => {
  it('fails a write past the BAT with EIO and leaves the image as it was', async () => {
    const name = tmp.path('short-bat.parallels');
    await createImage(parallelsDriver, name, 3 << 20, { cluster_size: 65536 });
    const bytes = readFileSync(name);
    bytes.writeUInt32LE(2, 32);
    writeFileSync(name, bytes);
    await openParallels(name, {}, async (blk) => {
      await expect(blk.write(2 << 20, 4096, new Uint8Array(4096), 0)).rejects.toThrow('Input/output error');
    });
    expect(readFileSync(name).equals(bytes)).toBe(true);
  });
});

describe('parallels with a BAT far larger than the file', () => {
  it('reads only the BAT entries the file holds', async () => {
    const name = tmp.path('huge-bat.parallels');
    const header = Buffer.alloc(64);
    header.write('WithouFreSpacExt', 0, 'latin1');
    header.writeUInt32LE(2, 16);
    header.writeUInt32LE(128, 28);
    header.writeUInt32LE(0x1fffff00, 32);
    header.writeBigUInt64LE(6144n, 36);
    writeFileSync(name, header);
    const before = process.memoryUsage().arrayBuffers;
    await openParallels(name, { 'read-only': 'on' }, async (blk) => {
      // The announced BAT is 2 GiB.
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(1 << 20);
      expect(blk.getLength()).toBe(3 << 20);
    });
  });
});

describe('parallels format extension', () => {
  /** A 3 MiB image (64 KiB clusters) whose format extension holds one dirty bitmap of this granularity in sectors. */
  async function imageWithBitmap(name: string, granularitySectors: number): Promise<void> {
    await createImage(parallelsDriver, name, 3 << 20, { cluster_size: 65536 });
    const cluster = Buffer.alloc(65536);
    cluster.writeBigUInt64LE(0xab234cef23dcea87n, 0);
    cluster.writeBigUInt64LE(0x20385fae252cb34an, 24);
    cluster.writeUInt32LE(40, 40);
    cluster.writeBigUInt64LE(6144n, 48);
    cluster.writeUInt32LE(granularitySectors, 72);
    cluster.writeUInt32LE(1, 76);
    createHash('md5').update(cluster.subarray(24)).digest().copy(cluster, 8);
    const bytes = Buffer.concat([readFileSync(name), cluster]);
    bytes.writeBigUInt64LE(BigInt((bytes.length - cluster.length) / 512), 56);
    writeFileSync(name, bytes);
  }

  // QEMU 7.2 aborts on these (an assertion in bdrv_create_dirty_bitmap).
  it.each([[0, 0], [3, 1536], [0x800000, 0]])('refuses a bitmap granularity of %i sectors', async (sectors, bytes) => {
    const name = tmp.path(`granularity-${sectors}.parallels`);
    await imageWithBitmap(name, sectors);
    await expect(openParallels(name, { 'read-only': 'on' }, async () => {})).rejects.toThrow(
      `Invalid bitmap granularity ${bytes}, expected a power of two of at least 512 bytes`,
    );
  });

  it('opens one with a valid bitmap', async () => {
    const name = tmp.path('granularity-ok.parallels');
    await imageWithBitmap(name, 128);
    await openParallels(name, { 'read-only': 'on' }, async (blk) => {
      expect(blk.getLength()).toBe(3 << 20);
    });
  });
});

describe.skipIf(!haveQemu)('parallels against QEMU 7.2', () => {
  it('creates and allocates clusters as qemu-img and qemu-io do', async () => {
    const ours = tmp.path('ours.parallels');
    const theirs = tmp.path('theirs.parallels');
    await createImage(parallelsDriver, ours, 3 << 20, { cluster_size: 65536 });
    qemuImg('create', '-q', '-f', 'parallels', '-o', 'cluster_size=64k', theirs, '3M');
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    const writes: Array<[number, number, number]> = [[100 << 10, 8192, 0x11], [0, 512, 0x22], [1 << 20, 200 << 10, 0x33]];
    await openParallels(ours, { 'prealloc-mode': 'truncate', 'prealloc-size': '1k' }, async (blk) => {
      for (const [offset, bytes, value] of writes) await blk.write(offset, bytes, new Uint8Array(bytes).fill(value));
    });
    qemuIo(theirs, writes.map(([offset, bytes, value]) => `write -P ${value} ${offset} ${bytes}`), 'parallels');
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
  });
});
