import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { vdiDriver } from '../../../src/drivers/vdi.js';
import { haveQemu, qemuImg, qemuImgStatus, qemuIo, tempDir } from './qcow2/helpers.js';
import { createImage, withImage } from './image-helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());

/** The file without the two random UUIDs of a new image. */
function layout(filename: string): Buffer {
  const bytes = readFileSync(filename);
  bytes.fill(0, 0x188, 0x1a8);
  return bytes;
}

describe.skipIf(!haveQemu)('vdi against QEMU 7.2', () => {
  it('creates and allocates blocks as qemu-img and qemu-io do', async () => {
    const ours = tmp.path('ours.vdi');
    const theirs = tmp.path('theirs.vdi');
    await createImage(vdiDriver, ours, 5 << 20);
    qemuImg('create', '-q', '-f', 'vdi', theirs, '5M');
    expect(layout(ours).equals(layout(theirs))).toBe(true);
    const writes: Array<[number, number, number]> = [[3 << 20, 4096, 0x11], [1000, 5000, 0x22], [(1 << 20) - 100, 300, 0x33]];
    await withImage('vdi', ours, async (blk) => {
      for (const [offset, bytes, value] of writes) await blk.write(offset, bytes, new Uint8Array(bytes).fill(value));
    });
    qemuIo(theirs, writes.map(([offset, bytes, value]) => `write -P ${value} ${offset} ${bytes}`), 'vdi');
    expect(layout(ours).equals(layout(theirs))).toBe(true);
    expect(qemuImgStatus('check', ours).status).toBe(0);
  });

  it('lays out static images as qemu-img does and reads QEMU-written data', async () => {
    const ours = tmp.path('static-ours.vdi');
    const theirs = tmp.path('static-theirs.vdi');
    await createImage(vdiDriver, ours, 3 << 20, { static: true });
    qemuImg('create', '-q', '-f', 'vdi', '-o', 'static=on', theirs, '3M');
    expect(layout(ours).equals(layout(theirs))).toBe(true);
    qemuIo(theirs, ['write -P 0x5a 1M 64k'], 'vdi');
    await withImage('vdi', theirs, async (blk) => {
      const buf = new Uint8Array(128 << 10);
      await blk.read((1 << 20) - (32 << 10), buf.length, buf);
      const expected = new Uint8Array(buf.length).fill(0x5a, 32 << 10, 96 << 10);
      expect(Buffer.from(buf).equals(expected)).toBe(true);
    });
  });
});
