import { copyFileSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import type { BlockNode } from '../../../src/block/node.js';
import { qedDriver } from '../../../src/drivers/qed/index.js';
import { isImageSizeValid, maxImageSize } from '../../../src/drivers/qed/header.js';
import type { QedState } from '../../../src/drivers/qed/tables.js';
import { haveQemu, qemuImg, qemuImgStatus, qemuIo, tempDir } from './qcow2/helpers.js';
import { createImage, withImage } from './image-helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());

describe('qed header rules', () => {
  it('computes the largest image in 64 bits, as QEMU does: large clusters wrap it to 0', () => {
    expect(maxImageSize(65536, 4)).toBe(2n ** 46n);
    expect(maxImageSize(4096, 1)).toBe(2n ** 30n);
    expect(maxImageSize(8 << 20, 4)).toBe(0n);
    expect(isImageSizeValid(0, 8 << 20, 4)).toBe(true);
    expect(isImageSizeValid(512, 8 << 20, 4)).toBe(false);
    expect(isImageSizeValid(1000, 65536, 4)).toBe(false);
  });

  it('refuses to open an image whose tables are one cluster (as QEMU 7.2 does)', async () => {
    const filename = tmp.path('one.qed');
    await createImage(qedDriver, filename, 1 << 20, { table_size: 1 });
    await expect(withImage('qed', filename, async () => {})).rejects.toThrow('QED table offset is invalid');
  });

  it('counts leaked clusters and leaves the file as it is', async () => {
    const filename = tmp.path('leaks.qed');
    await createImage(qedDriver, filename, 1 << 20);
    await withImage('qed', filename, (blk) => blk.write(0, 4096, new Uint8Array(4096).fill(1)));
    truncateSync(filename, readFileSync(filename).length + 3 * 65536);
    await withImage('qed', filename, async (blk) => {
      const result = await qedDriver.check!(blk.root.node as BlockNode<QedState>, undefined, () => {});
      expect(result).toMatchObject({ leaks: 3, corruptions: 0, allocatedClusters: 1, totalClusters: 16 });
    });
  });
});

describe.skipIf(!haveQemu)('qed against QEMU 7.2', () => {
  it('creates and allocates clusters as qemu-img and qemu-io do', async () => {
    const ours = tmp.path('ours.qed');
    const theirs = tmp.path('theirs.qed');
    await createImage(qedDriver, ours, 4 << 20, { cluster_size: 4096, table_size: 2 });
    qemuImg('create', '-q', '-f', 'qed', '-o', 'cluster_size=4k,table_size=2', theirs, '4M');
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    const writes: Array<[number, number, number]> = [[3 << 20, 10000, 0x11], [1000, 5000, 0x22], [(1 << 20) - 100, 300, 0x33]];
    await withImage('qed', ours, async (blk) => {
      for (const [offset, bytes, value] of writes) await blk.write(offset, bytes, new Uint8Array(bytes).fill(value));
      await blk.writeZeroes(2 << 20, 64 << 10, 0);
    });
    qemuIo(theirs, [...writes.map(([offset, bytes, value]) => `write -P ${value} ${offset} ${bytes}`), 'write -z 2M 64k'], 'qed');
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    expect(qemuImgStatus('check', ours).status).toBe(0);
  });
});

/** Damage an image's L1 and L2 entries the way a small seeded generator picks them: markers, cluster offsets in and past the file, unaligned and wild values. */
function damageTables(filename: string, seed: number): void {
  let state = seed;
  const next = (n: number): number => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state % n;
  };
  const data = readFileSync(filename);
  const cs = 4096;
  const l1 = Number(data.readBigUInt64LE(40));
  const l2 = Number(data.readBigUInt64LE(l1));
  const clusters = data.length / cs;
  const values = [
    (): bigint => 0n, (): bigint => 1n, (): bigint => BigInt(next(clusters + 3) * cs),
    (): bigint => BigInt(next(clusters) * cs + 1 + next(cs - 1)), (): bigint => BigInt([l1, l2][next(2)]!),
    (): bigint => BigInt(next(2 ** 30)) * 2n ** 34n,
  ];
  for (let i = 1 + next(4); i > 0; i--) {
    const at = next(4) === 0 ? l1 + 8 * next(4) : l2 + 8 * next(300);
    data.writeBigUInt64LE(values[next(values.length)]!(), at);
  }
  if (next(3) === 0) data.writeBigUInt64LE(2n, 16);
  writeFileSync(filename, data);
}

describe.skipIf(!haveQemu)('qed with damaged tables, against QEMU 7.2', () => {
  it.each([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])('seed %i: writes, check and repair leave what QEMU leaves', async (seed) => {
    const theirs = tmp.path(`damaged-theirs-${seed}.qed`);
    const ours = tmp.path(`damaged-ours-${seed}.qed`);
    qemuImg('create', '-q', '-f', 'qed', '-o', 'cluster_size=4k', theirs, '4M');
    qemuIo(theirs, ['write -P 1 0 100k', 'write -P 2 1M 12k'], 'qed');
    damageTables(theirs, seed);
    copyFileSync(theirs, ours);
    const writes: Array<[number, number, number]> = [[2 << 20, 8192, 5], [40 << 10, 8192, 6], [3 << 20, 4096, 7]];
    spawnSync('qemu-io', ['-f', 'qed', ...writes.flatMap(([offset, bytes, value]) => ['-c', `write -P ${value} ${offset} ${bytes}`]), theirs]);
    await withImage('qed', ours, async (blk) => {
      // A write that meets a damaged entry fails, as in QEMU; the next ones still run.
      for (const [offset, bytes, value] of writes) await blk.write(offset, bytes, new Uint8Array(bytes).fill(value)).catch(() => {});
    });
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    const reported = JSON.parse(qemuImgStatus('check', '--output=json', theirs).stdout) as Record<string, number>;
    await withImage('qed', ours, async (blk) => {
      const result = await qedDriver.check!(blk.root.node as BlockNode<QedState>, undefined, () => {});
      expect([result.corruptions, result.leaks, result.allocatedClusters, result.fragmentedClusters])
        .toEqual([reported.corruptions ?? 0, reported.leaks ?? 0, reported['allocated-clusters'], reported['fragmented-clusters'] ?? 0]);
    });
    qemuImgStatus('check', '-r', 'all', theirs);
    await withImage('qed', ours, async (blk) => {
      await qedDriver.check!(blk.root.node as BlockNode<QedState>, 'all', () => {});
    });
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
  });
});
