import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import type { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { Secret } from '../../../src/block/secret.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { luksDriver } from '../../../src/drivers/luks.js';
import { createImage, withImage } from '../helpers/images.js';
import { haveQemu, qemuImg, qemuImgStatus, tempDir } from './qcow2/helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());

function layerWithSecret(password: string): BlockLayer {
  const layer = new BlockLayer(allDrivers);
  const secret = new Secret('sec0', { data: password });
  secret.complete(() => undefined);
  layer.objects.set('sec0', secret);
  return layer;
}

function withLuks(filename: string, password: string, use: (blk: BlockBackend) => Promise<void>): Promise<void> {
  return withImage(filename, { driver: 'luks', 'key-secret': 'sec0' }, use, layerWithSecret(password));
}

function createLuksVolume(filename: string, size: number, options: Record<string, string | number> = {}): Promise<void> {
  return createImage(luksDriver, filename, size, { 'key-secret': 'sec0', 'iter-time': 10, ...options }, layerWithSecret('correct-horse'));
}

describe('luks', () => {
  it('stores data encrypted after the key material and reads it back with the password', async () => {
    const file = tmp.path('vol.luks');
    await createLuksVolume(file, 1 << 20, { 'cipher-alg': 'aes-128', 'cipher-mode': 'cbc', 'ivgen-alg': 'essiv' });
    const data = new Uint8Array(4096).fill(0x5a);
    await withLuks(file, 'correct-horse', async (blk) => {
      expect(blk.getLength()).toBe(1 << 20);
      await blk.write(8192, data.length, data);
    });
    const payloadOffset = readFileSync(file).readUInt32BE(104) * 512;
    expect(readFileSync(file).subarray(payloadOffset + 8192, payloadOffset + 8192 + 4096).equals(Buffer.from(data))).toBe(false);
    await withLuks(file, 'correct-horse', async (blk) => {
      const buf = new Uint8Array(4096);
      await blk.read(8192, 4096, buf);
      expect(buf).toEqual(data);
    });
    await expect(withLuks(file, 'wrong', async () => {})).rejects.toThrow('Invalid password, cannot unlock any keyslot');
  });

  it('measures the key material and the disk', async () => {
    const settings = { 'key-secret': 'sec0', 'cipher-alg': 'aes-128', 'cipher-mode': 'cbc' };
    const layer = layerWithSecret('x');
    expect(await luksDriver.measure!({ size: 70000, ...settings }, undefined, (id) => layer.objects.get(id)))
      .toEqual({ required: 528384 + 70000, fullyAllocated: 528384 + 70000 });
    await expect(luksDriver.measure!({ size: 1 }, undefined, () => undefined)).rejects.toThrow("Parameter 'key-secret' is required for cipher");
  });
});

describe.skipIf(!haveQemu)('luks against QEMU 7.2', () => {
  // QEMU's PBKDF2 calibration measures for about half a second of CPU time whatever iter-time
  // says: on a busy machine that alone can outlast the default timeout.
  it('reads what QEMU wrote and QEMU reads what blkio wrote', async () => {
    const file = tmp.path('qemu.luks');
    const secret = ['--object', 'secret,id=sec0,data=correct-horse'];
    // QEMU 7.2's PBKDF2 calibration now and then fails on a busy machine ("Unable to get accurate CPU usage").
    for (let attempt = 1; qemuImgStatus('create', '-q', '-f', 'luks', ...secret, '-o', 'key-secret=sec0,iter-time=10', file, '1M').status; attempt++) {
      if (attempt === 10) throw new Error('qemu-img could not create the volume');
    }
    const image = `driver=luks,file.filename=${file},key-secret=sec0`;
    const pattern = tmp.path('pattern.raw');
    writeFileSync(pattern, Buffer.alloc(1 << 20));
    qemuImg('convert', '-n', ...secret, '-f', 'raw', pattern, '--target-image-opts', image);
    await withLuks(file, 'correct-horse', async (blk) => {
      const buf = new Uint8Array(65536);
      await blk.read(0, buf.length, buf);
      expect(buf.every((b) => b === 0)).toBe(true);
      await blk.write(65536, 65536, new Uint8Array(65536).fill(0x33));
    });
    qemuImg('convert', ...secret, '--image-opts', image, '-O', 'raw', pattern);
    const plain = readFileSync(pattern);
    expect(plain.subarray(65536, 131072).every((b) => b === 0x33)).toBe(true);
    expect(plain.subarray(0, 65536).every((b) => b === 0)).toBe(true);
  }, 120_000);
});
