import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { qcowDriver } from '../../../src/drivers/qcow.js';
import type { BlockBackend } from '../../../src/block/backend.js';
import { createImage, withImage } from './image-helpers.js';
import { haveQemu, qemuImg, qemuIo, tempDir } from './qcow2/helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());

function openQcow(name: string, options: Record<string, string>, use: (blk: BlockBackend) => Promise<void>): Promise<void> {
  return withImage('qcow', name, use, options);
}

describe('qcow', () => {
  it('reads back what it wrote, compressed clusters too, and refuses partial compressed writes', async () => {
    const name = tmp.path('rw.qcow');
    await createImage(qcowDriver, name, 1 << 20);
    await openQcow(name, {}, async (blk) => {
      await blk.write(4096, 4096, new Uint8Array(4096).fill(7), 0);
      await blk.writeCompressed(8192, 4096, new Uint8Array(4096).fill(9));
      await expect(blk.writeCompressed(16384, 1024, new Uint8Array(1024))).rejects.toThrow('Invalid argument');
      // A partial write into a compressed cluster decompresses it into a new one first.
      await blk.write(8192, 512, new Uint8Array(512).fill(1), 0);
      const out = new Uint8Array(8192);
      await blk.read(4096, 8192, out, 0);
      expect(out.subarray(0, 4096).every((b) => b === 7)).toBe(true);
      expect(out.subarray(4096, 4608).every((b) => b === 1)).toBe(true);
      expect(out.subarray(4608).every((b) => b === 9)).toBe(true);
    });
  });

  it('reads back data spread over more L2 tables than it keeps in memory', async () => {
    const name = tmp.path('many-l2.qcow');
    // 4 KiB clusters with 512-entry L2 tables: one table maps 2 MiB.
    const tables = 20;
    await createImage(qcowDriver, name, tables << 21);
    await openQcow(name, {}, async (blk) => {
      for (let i = 0; i < tables; i++) await blk.write(i << 21, 512, new Uint8Array(512).fill(i + 1), 0);
      for (let i = tables - 1; i >= 0; i--) await blk.write((i << 21) + 4096, 512, new Uint8Array(512).fill(i + 101), 0);
      const out = new Uint8Array(4608);
      for (let i = 0; i < tables; i++) {
        await blk.read(i << 21, 4608, out, 0);
        expect([out[0], out[4095], out[4096], out[4607]]).toEqual([i + 1, 0, i + 101, i + 101]);
      }
    });
  });

  it('opens a header-only image with a large L1 table past the end of the file, which reads as free', async () => {
    const name = tmp.path('large-l1.qcow');
    const l1Entries = 1 << 20;
    // 512-byte clusters and 64-entry L2 tables: each L1 entry maps 32 KiB.
    const size = l1Entries * (1 << 15);
    const header = new DataView(new ArrayBuffer(48));
    header.setUint32(0, 0x514649fb);
    header.setUint32(4, 1);
    header.setBigUint64(24, BigInt(size));
    header.setUint8(32, 9);
    header.setUint8(33, 6);
    header.setBigUint64(40, 48n);
    writeFileSync(name, new Uint8Array(header.buffer));
    await openQcow(name, {}, async (blk) => {
      expect(blk.getLength()).toBe(size);
      const last = size - 512;
      await blk.write(last, 512, new Uint8Array(512).fill(5), 0);
      const out = new Uint8Array(1024);
      await blk.read(last - 512, 1024, out, 0);
      expect(out.subarray(0, 512).every((b) => b === 0)).toBe(true);
      expect(out.subarray(512).every((b) => b === 5)).toBe(true);
      await blk.root.node.driver.makeEmpty!(blk.root.node);
      await blk.read(last, 512, out, 0);
      expect(out.subarray(0, 512).every((b) => b === 0)).toBe(true);
    });
  });
});

describe.skipIf(!haveQemu)('qcow against QEMU 7.2', () => {
  it('creates and allocates clusters as qemu-img and qemu-io do', async () => {
    const ours = tmp.path('ours.qcow');
    const theirs = tmp.path('theirs.qcow');
    await createImage(qcowDriver, ours, 10 << 20);
    qemuImg('create', '-q', '-f', 'qcow', theirs, '10M');
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    const writes: Array<[number, number, number]> = [[5000, 3000, 0x11], [3 << 20, 512, 0x22], [9 << 20, 8192, 0x33]];
    await openQcow(ours, {}, async (blk) => {
      for (const [offset, bytes, value] of writes) await blk.write(offset, bytes, new Uint8Array(bytes).fill(value), 0);
    });
    qemuIo(theirs, writes.map(([offset, bytes, value]) => `write -P ${value} ${offset} ${bytes}`), 'qcow');
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
  });
});
