import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { DirtyBitmap } from '../../../../src/block/dirty-bitmap.js';
import type { BlockNode } from '../../../../src/block/node.js';
import { addBitmap, findBitmap } from '../../../../src/block/node-bitmaps.js';
import { checkCanStoreBitmap } from '../../../../src/drivers/qcow2/bitmaps-store.js';
import type { Qcow2State } from '../../../../src/drivers/qcow2/state.js';
import { createQcow2, expectClean, haveQemu, openQcow2, pattern, qemuImg, qemuIo, tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());

function setBits(bitmap: NonNullable<ReturnType<typeof findBitmap>>): number[] {
  const bits: number[] = [];
  for (let i = bitmap.nextSet(0); i >= 0; i = bitmap.nextSet(i + 1)) bits.push(i);
  return bits;
}

describe('qcow2 persistent bitmaps through the library', () => {
  it('stores a bitmap at close and loads its bits, disabled state and granularity again', async () => {
    const file = tmp.path('lib.qcow2');
    await createQcow2(file, 4 * 2 ** 20);
    let img = await openQcow2(file);
    await addBitmap(img.node, 'tracked', { granularity: 4096, persistent: true, disabled: false });
    await addBitmap(img.node, 'off', { persistent: true, disabled: true });
    await img.blk.write(8192, 4096, pattern(4096, 1));
    await img.blk.writeZeroes(2 ** 20, 100, 0);
    await img.close();

    img = await openQcow2(file, false);
    const tracked = findBitmap(img.node, 'tracked')!;
    expect(setBits(tracked)).toEqual([2, 256]);
    expect(tracked).toMatchObject({ granularity: 4096, enabled: true, readonly: true, persistent: true, inconsistent: false });
    expect(findBitmap(img.node, 'off')).toMatchObject({ granularity: 65536, enabled: false });
    expect(setBits(findBitmap(img.node, 'off')!)).toEqual([]);
    await img.close();
  });

  it('marks loaded bitmaps in use on disk while the image is open read-write, not read-only', async () => {
    const file = tmp.path('inuse.qcow2');
    await createQcow2(file, 2 ** 20);
    let img = await openQcow2(file);
    await addBitmap(img.node, 'b', { persistent: true, disabled: false });
    await img.close();
    const flagsOnDisk = () => {
      const data = readFileSync(file);
      const ext = data.indexOf(Buffer.from([0x23, 0x85, 0x28, 0x75]));
      const directory = Number(data.readBigUInt64BE(ext + 8 + 16));
      return data.readUInt32BE(directory + 12);
    };
    expect(flagsOnDisk()).toBe(2);
    img = await openQcow2(file, false);
    expect(flagsOnDisk()).toBe(2);
    await img.close();
    img = await openQcow2(file);
    expect(flagsOnDisk()).toBe(3);
    await img.close();
    expect(flagsOnDisk()).toBe(2);
  });

  it.skipIf(!haveQemu)('lays out what QEMU lays out for the same writes', async () => {
    const ours = tmp.path('ours.qcow2');
    const theirs = tmp.path('theirs.qcow2');
    for (const file of [ours, theirs]) {
      qemuImg('create', '-f', 'qcow2', file, '16M');
      qemuImg('bitmap', '--add', '-g', '512', file, 'b');
    }
    const img = await openQcow2(ours);
    await img.blk.write(0, 512, pattern(512, 7));
    await img.blk.write(5 * 2 ** 20 + 100, 70000, pattern(70000, 8));
    await img.blk.discard(9 * 2 ** 20, 65536);
    await img.close();
    qemuIo(theirs, ['write -P 7 0 512', `write -P 8 ${5 * 2 ** 20 + 100} 70000`, `discard ${9 * 2 ** 20} 64k`]);
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    expectClean(ours);
  });
});

describe('checkCanStoreBitmap', () => {
  const state = { header: { version: 3 }, size: 2 ** 20, clusterSize: 65536 } as unknown as Qcow2State;
  const nodeWith = (bitmaps: DirtyBitmap[]) => ({ nodeName: '#block001', dirtyBitmaps: bitmaps }) as unknown as BlockNode;
  const persistent = (name: string) => Object.assign(new DirtyBitmap(name, 65536, 2 ** 20), { persistent: true });
  const prefix = "Can't make bitmap 'new' persistent in '#block001': ";

  it('takes up to 65535 bitmaps', () => {
    const many = Array.from({ length: 65534 }, (_, i) => persistent(`b${i}`));
    expect(() => checkCanStoreBitmap(state, nodeWith(many), 'new', 65536)).not.toThrow();
    many.push(persistent('one more'));
    expect(() => checkCanStoreBitmap(state, nodeWith(many), 'new', 65536)).toThrow(`${prefix}Maximum number of persistent bitmaps is already reached`);
  });

  it('refuses a directory beyond 64 MiB, a name in use, v2 images', () => {
    const long = Array.from({ length: 64100 }, (_, i) => persistent(`${'x'.repeat(1016)}${String(i).padStart(5, '0')}`));
    expect(() => checkCanStoreBitmap(state, nodeWith(long), 'new', 65536)).toThrow(`${prefix}Not enough space in the bitmap directory`);
    expect(() => checkCanStoreBitmap(state, nodeWith([persistent('new')]), 'new', 65536)).toThrow('Bitmap already exists: new');
    const v2 = { ...state, header: { version: 2 } } as unknown as Qcow2State;
    expect(() => checkCanStoreBitmap(v2, nodeWith([]), 'new', 65536)).toThrow(`${prefix}Cannot store dirty bitmaps in qcow2 v2 files`);
  });
});
