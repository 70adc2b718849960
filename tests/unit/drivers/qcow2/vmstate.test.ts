import { copyFileSync, readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlockLayer } from '../../../../src/block/graph.js';
import { BlockBackend } from '../../../../src/block/backend.js';
import { PERM_ALL, PERM_CONSISTENT_READ } from '../../../../src/block/permissions.js';
import { allDrivers } from '../../../../src/drivers/index.js';
import { createQcow2, expectClean, haveQemu, openQcow2, pattern, qemuImg, qemuIo, tempDir } from './helpers.js';

describe('qcow2 VM state', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => tmp.remove());

  it('reads zeroes where nothing was saved, and what was saved elsewhere, leaving the disk alone', async () => {
    const file = tmp.path('a.qcow2');
    await createQcow2(file, 1 << 20, { cluster_size: 4096 });
    const img = await openQcow2(file);
    try {
      await img.blk.saveVmState(8192, 1024, pattern(1024, 0x42));
      const buf = new Uint8Array(3 * 4096).fill(0xff);
      await img.blk.loadVmState(4096, buf.length, buf);
      expect(buf.subarray(0, 4096).every((b) => b === 0)).toBe(true);
      expect(buf.subarray(4096, 5120).every((b) => b === 0x42)).toBe(true);
      expect(buf.subarray(5120).every((b) => b === 0)).toBe(true);
      const disk = new Uint8Array(1 << 20).fill(0xff);
      await img.blk.read(0, disk.length, disk);
      expect(disk.every((b) => b === 0)).toBe(true);
    } finally {
      await img.close();
    }
  });

  it.skipIf(!haveQemu)('lays out the image as qemu-io does, L1 growth included', async () => {
    const ours = tmp.path('ours.qcow2');
    const theirs = tmp.path('theirs.qcow2');
    qemuImg('create', '-f', 'qcow2', '-o', 'cluster_size=512', ours, '64k');
    copyFileSync(ours, theirs);
    qemuIo(theirs, ['write -b -P 0x11 0 4k', 'write -b -P 0x22 16M 1536']);
    const img = await openQcow2(ours);
    try {
      await img.blk.saveVmState(0, 4096, pattern(4096, 0x11));
      await img.blk.saveVmState(16 << 20, 1536, pattern(1536, 0x22));
      await img.blk.flush();
    } finally {
      await img.close();
    }
    expectClean(ours);
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
  });

  it('is not supported without a driver that keeps it', async () => {
    const layer = new BlockLayer(allDrivers);
    const node = await layer.openNode('null-co://', { driver: 'raw' });
    const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ, PERM_ALL);
    try {
      await expect(blk.loadVmState(0, 512, new Uint8Array(512))).rejects.toMatchObject({ code: 'ENOTSUP' });
    } finally {
      blk.detach();
      await layer.closeAll();
    }
  });
});
