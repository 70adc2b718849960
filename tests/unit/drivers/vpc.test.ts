import { readFileSync, statSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import type { BlockBackend } from '../../../src/block/backend.js';
import { vpcDriver } from '../../../src/drivers/vpc.js';
import { createImage, withImage } from '../helpers/images.js';
import { haveQemu, qemuImg, qemuIo, tempDir } from './qcow2/helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());

function createVpc(filename: string, size: number, options: Record<string, string | boolean> = {}): Promise<void> {
  return createImage(vpcDriver, filename, size, options);
}

function withVpc(filename: string, use: (blk: BlockBackend) => Promise<void>): Promise<void> {
  return withImage(filename, { driver: 'vpc' }, use);
}

/** The file with each footer's timestamp, checksum and UUID zeroed (they differ from image to image). */
function layout(filename: string): Buffer {
  const bytes = readFileSync(filename);
  for (const at of [0, bytes.length - 512]) {
    if (bytes.toString('latin1', at, at + 8) !== 'conectix') continue;
    bytes.fill(0, at + 24, at + 28);
    bytes.fill(0, at + 64, at + 84);
  }
  return bytes;
}

describe('vpc', () => {
  it('rounds a new disk up to a whole geometry, or keeps the sector-rounded size with force_size', async () => {
    const sizes: Array<[number, Record<string, string | boolean>, number]> = [
      [1000, {}, 34816], [10 << 20, {}, 10514432], [1000, { force_size: true }, 1024], [3 << 20, { subformat: 'fixed' }, 3168256],
      // Past the largest geometry the size itself is kept.
      [2000 * 2 ** 30, {}, 2000 * 2 ** 30],
    ];
    for (const [size, options, expected] of sizes) {
      const file = tmp.path('size.vhd');
      await createVpc(file, size, options);
      await withVpc(file, async (blk) => expect(blk.getLength()).toBe(expected));
    }
  });

  it('refuses disks over 2040 GiB', async () => {
    await expect(createVpc(tmp.path('huge.vhd'), 2041 * 2 ** 30)).rejects.toThrow("The image size is too large for file format 'vpc'");
  });

  it('allocates a block once when writes to it run at the same time', async () => {
    const file = tmp.path('race.vhd');
    await createVpc(file, 8 << 20);
    const before = statSync(file).size;
    await withVpc(file, async (blk) => {
      await Promise.all([0, 1, 2, 3].map((i) => blk.write(i * 65536, 65536, new Uint8Array(65536).fill(i + 1))));
      for (let i = 0; i < 4; i++) {
        const buf = new Uint8Array(65536);
        await blk.read(i * 65536, 65536, buf);
        expect(buf.every((b) => b === i + 1)).toBe(true);
      }
    });
    // One bitmap sector and one 2 MiB block.
    expect(statSync(file).size).toBe(before + 512 + (2 << 20));
  });
});

describe.skipIf(!haveQemu)('vpc against QEMU 7.2', () => {
  it('creates and allocates blocks as qemu-img and qemu-io do', async () => {
    const ours = tmp.path('ours.vhd');
    const theirs = tmp.path('theirs.vhd');
    await createVpc(ours, 20 << 20);
    qemuImg('create', '-q', '-f', 'vpc', theirs, '20M');
    expect(layout(ours).equals(layout(theirs))).toBe(true);
    const writes: Array<[number, number, number]> = [[5 << 20, 4096, 0x11], [1000, 5000, 0x22], [(2 << 20) - 512, 1024, 0x33]];
    await withVpc(ours, async (blk) => {
      for (const [offset, bytes, value] of writes) await blk.write(offset, bytes, new Uint8Array(bytes).fill(value));
    });
    qemuIo(theirs, writes.map(([offset, bytes, value]) => `write -P ${value} ${offset} ${bytes}`), 'vpc');
    expect(layout(ours).equals(layout(theirs))).toBe(true);
  });

  it('lays out fixed images as qemu-img does', async () => {
    const ours = tmp.path('fixed-ours.vhd');
    const theirs = tmp.path('fixed-theirs.vhd');
    await createVpc(ours, 12345678, { subformat: 'fixed', force_size: true });
    qemuImg('create', '-q', '-f', 'vpc', '-o', 'subformat=fixed,force_size=on', theirs, '12345678');
    expect(layout(ours).equals(layout(theirs))).toBe(true);
  });
});
