import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { createImageFile } from '../../../src/commands/img/create.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { fileDriver } from '../../../src/drivers/file.js';
import { parallelsDriver } from '../../../src/drivers/parallels.js';
import { haveQemu, qemuImg, qemuIo, tempDir } from './qcow2/helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());
const INUSE_OFFSET = 44;

async function createParallels(filename: string, size: number, clusterSize: number): Promise<void> {
  const layer = new BlockLayer(allDrivers);
  try {
    await createImageFile(layer, parallelsDriver, fileDriver, { filename, size, options: { size, cluster_size: clusterSize } });
  } finally {
    await layer.closeAll();
  }
}

async function withParallels(filename: string, options: Record<string, string>, use: (blk: BlockBackend) => Promise<void>): Promise<void> {
  const layer = new BlockLayer(allDrivers);
  const node = await layer.openNode(filename, { driver: 'parallels', ...options });
  const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ | (options['read-only'] === 'on' ? 0 : PERM_WRITE), PERM_ALL);
  try {
    await use(blk);
  } finally {
    blk.detach();
    await layer.closeAll();
  }
}

describe('parallels', () => {
  it('refuses to open an image in use read-write, and opens it read-only', async () => {
    const name = tmp.path('inuse.parallels');
    await createParallels(name, 1 << 20, 65536);
    const bytes = readFileSync(name);
    bytes.writeUInt32LE(0x746f6e59, INUSE_OFFSET);
    writeFileSync(name, bytes);
    await expect(withParallels(name, {}, async () => {})).rejects.toThrow(
      'parallels: Image was not closed correctly; cannot be opened read/write',
    );
    await withParallels(name, { 'read-only': 'on' }, async (blk) => {
      expect(blk.getLength()).toBe(1 << 20);
    });
  });

  it('marks the image in use while open read-write and cuts the preallocation at close', async () => {
    const name = tmp.path('mark.parallels');
    await createParallels(name, 1 << 20, 65536);
    await withParallels(name, {}, async (blk) => {
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

describe.skipIf(!haveQemu)('parallels against QEMU 7.2', () => {
  it('creates and allocates clusters as qemu-img and qemu-io do', async () => {
    const ours = tmp.path('ours.parallels');
    const theirs = tmp.path('theirs.parallels');
    await createParallels(ours, 3 << 20, 65536);
    qemuImg('create', '-q', '-f', 'parallels', '-o', 'cluster_size=64k', theirs, '3M');
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    const writes: Array<[number, number, number]> = [[100 << 10, 8192, 0x11], [0, 512, 0x22], [1 << 20, 200 << 10, 0x33]];
    await withParallels(ours, { 'prealloc-mode': 'truncate', 'prealloc-size': '1k' }, async (blk) => {
      for (const [offset, bytes, value] of writes) await blk.write(offset, bytes, new Uint8Array(bytes).fill(value));
    });
    qemuIo(theirs, writes.map(([offset, bytes, value]) => `write -P ${value} ${offset} ${bytes}`), 'parallels');
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
  });
});
