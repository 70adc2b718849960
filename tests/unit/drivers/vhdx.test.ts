import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { createImageFile } from '../../../src/commands/img/create.js';
import { crc32c } from '../../../src/crc32c.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { fileDriver } from '../../../src/drivers/file.js';
import { vhdxDriver } from '../../../src/drivers/vhdx/index.js';
import { haveQemu, qemuImg, qemuImgStatus, qemuIo, tempDir } from './qcow2/helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());

const MiB = 1024 * 1024;

async function createVhdx(filename: string, size: number, options: Record<string, string | number | boolean> = {}): Promise<void> {
  const layer = new BlockLayer(allDrivers);
  try {
    await createImageFile(layer, vhdxDriver, fileDriver, { filename, size, options: { size, ...options } });
  } finally {
    await layer.closeAll();
  }
}

async function withVhdx(filename: string, use: (blk: BlockBackend) => Promise<void>, readOnly = false): Promise<void> {
  const layer = new BlockLayer(allDrivers);
  const node = await layer.openNode(filename, { driver: 'vhdx', ...(readOnly ? { 'read-only': 'on' } : {}) });
  const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ | (readOnly ? 0 : PERM_WRITE), PERM_ALL);
  try {
    await use(blk);
  } finally {
    blk.detach();
    await layer.closeAll();
  }
}

/** The sequence number of the current header. */
function sequenceOf(d: Buffer): bigint {
  const a = d.readBigUInt64LE(0x10008);
  const b = d.readBigUInt64LE(0x20008);
  return a > b ? a : b;
}

/** The file without what is random in it: header GUIDs, sequence numbers and checksums, the page 83 GUID, log GUIDs and checksums. */
function layout(filename: string): Buffer {
  const d = readFileSync(filename);
  for (const o of [0x10000, 0x20000]) d.fill(0, o + 4, o + 64);
  d.fill(0, 0x310010, 0x310020);
  for (let o = 0x100000; o < 0x200000 && o < d.length; o += 4096) {
    if (d.toString('latin1', o, o + 4) === 'loge') {
      d.fill(0, o + 4, o + 8);
      d.fill(0, o + 32, o + 48);
    }
  }
  return d;
}

/** Point the current header at the last log entry's GUID: the entry is pending again. */
function makeDirty(filename: string): void {
  const d = readFileSync(filename);
  const header = d.readBigUInt64LE(0x10008) > d.readBigUInt64LE(0x20008) ? 0x10000 : 0x20000;
  let last = -1;
  for (let o = 0x100000; o < 0x200000; o += 4096) if (d.toString('latin1', o, o + 4) === 'loge') last = o;
  d.copy(d, header + 48, last + 32, last + 48);
  const block = Buffer.from(d.subarray(header, header + 4096));
  block.fill(0, 4, 8);
  d.writeUInt32LE(crc32c(block), header + 4);
  writeFileSync(filename, d);
}

describe('vhdx', () => {
  it('creates headers with valid checksums, the second current', async () => {
    const file = tmp.path('new.vhdx');
    await createVhdx(file, 64 * MiB);
    const d = readFileSync(file);
    expect(d.toString('latin1', 0, 8)).toBe('vhdxfile');
    for (const o of [0x10000, 0x20000, 0x30000, 0x40000]) {
      const size = o >= 0x30000 ? 0x10000 : 4096;
      const block = Buffer.from(d.subarray(o, o + size));
      const stored = block.readUInt32LE(4);
      block.fill(0, 4, 8);
      expect(crc32c(block)).toBe(stored);
    }
    expect(d.readBigUInt64LE(0x20008)).toBe(d.readBigUInt64LE(0x10008) + 1n);
    expect(d.length).toBe(8 * MiB);
  });

  it('reads back what it wrote across blocks, after reopening', async () => {
    const file = tmp.path('rw.vhdx');
    await createVhdx(file, 64 * MiB, { block_size: MiB });
    const data = Uint8Array.from({ length: 3 * MiB }, (_, i) => (i * 7) & 0xff);
    await withVhdx(file, (blk) => blk.write(MiB / 2, data.length, data));
    await withVhdx(file, async (blk) => {
      const buf = new Uint8Array(4 * MiB);
      await blk.read(0, buf.length, buf);
      expect(buf.subarray(0, MiB / 2).every((b) => b === 0)).toBe(true);
      expect(Buffer.from(buf.subarray(MiB / 2, MiB / 2 + data.length)).equals(data)).toBe(true);
    }, true);
  });

  it('replays a pending log entry read-write, and refuses it read-only', async () => {
    const file = tmp.path('dirty.vhdx');
    await createVhdx(file, 64 * MiB);
    await withVhdx(file, (blk) => blk.write(9 * MiB, 4096, new Uint8Array(4096).fill(2)));
    makeDirty(file);
    // The BAT entry of block 1 lost on disk: only the replay brings the data back.
    const d = readFileSync(file);
    d.fill(0, 0x200008, 0x200010);
    writeFileSync(file, d);
    await expect(withVhdx(file, async () => {}, true)).rejects.toThrow(/opened read-only, but contains a log that needs to be replayed/);
    const before = sequenceOf(readFileSync(file));
    await withVhdx(file, async (blk) => {
      const buf = new Uint8Array(4096);
      await blk.read(9 * MiB, 4096, buf);
      expect(buf.every((b) => b === 2)).toBe(true);
    });
    const after = readFileSync(file);
    // A new data write GUID and the emptied log: two pairs of header updates.
    expect(sequenceOf(after) - before).toBe(4n);
    expect(after.subarray(0x10030, 0x10040).every((b) => b === 0)).toBe(true);
  });
});

describe.skipIf(!haveQemu)('vhdx against QEMU 7.2', () => {
  it('creates and allocates blocks as qemu-img and qemu-io do', async () => {
    const ours = tmp.path('ours.vhdx');
    const theirs = tmp.path('theirs.vhdx');
    await createVhdx(ours, 64 * MiB);
    qemuImg('create', '-q', '-f', 'vhdx', theirs, '64M');
    expect(layout(ours).equals(layout(theirs))).toBe(true);
    const writes: Array<[number, number, number]> = [[8 * MiB, 4096, 0x11], [1000, 5000, 0x22], [16 * MiB - 4096, 8192, 0x33]];
    // Both from the same image, so that the sequence numbers compare too.
    copyFileSync(theirs, ours);
    await withVhdx(ours, async (blk) => {
      for (const [offset, bytes, value] of writes) {
        const start = Math.floor(offset / 512) * 512;
        const end = Math.ceil((offset + bytes) / 512) * 512;
        const buf = new Uint8Array(end - start);
        await blk.read(start, buf.length, buf);
        buf.fill(value, offset - start, offset - start + bytes);
        await blk.write(start, buf.length, buf);
      }
    });
    qemuIo(theirs, writes.map(([offset, bytes, value]) => `write -P ${value} ${offset} ${bytes}`), 'vhdx');
    expect(layout(ours).equals(layout(theirs))).toBe(true);
    expect(sequenceOf(readFileSync(ours))).toBe(sequenceOf(readFileSync(theirs)));
    expect(qemuImgStatus('check', ours).status).toBe(0);
  });

  it('reads fixed images QEMU wrote', async () => {
    const theirs = tmp.path('fixed.vhdx');
    qemuImg('create', '-q', '-f', 'vhdx', '-o', 'subformat=fixed,block_state_zero=off', theirs, '32M');
    qemuIo(theirs, ['write -P 0x5a 1M 64k'], 'vhdx');
    await withVhdx(theirs, async (blk) => {
      const buf = new Uint8Array(128 << 10);
      await blk.read(MiB - (32 << 10), buf.length, buf);
      const expected = new Uint8Array(buf.length).fill(0x5a, 32 << 10, 96 << 10);
      expect(Buffer.from(buf).equals(expected)).toBe(true);
    }, true);
  });
});
