import { copyFileSync, readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  createSnapshot, gotoSnapshot, listSnapshots, loadSnapshotTemporarily,
} from '../../../src/block/internal-snapshots.js';
import { BlkioError } from '../../../src/errors.js';
import {
  expectClean, haveQemu, openQcow2, pattern, qemuImg, qemuImgStatus, qemuIo, tempDir,
} from '../drivers/qcow2/helpers.js';

const taken = { name: 'blkio', dateSec: 1700000000, dateNsec: 5000, vmClockNsec: 0n, vmStateSize: 0n, icount: 0n };

describe.skipIf(!haveQemu)('internal snapshots through the graph, against qemu-img', () => {
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => {
    t = tempDir();
  });
  afterEach(() => t.remove());

  it('takes snapshots qemu-img checks clean, lists and applies', async () => {
    const file = t.path('a.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', file, '1M');
    qemuIo(file, ['write -P 1 0 128k']);
    const img = await openQcow2(file);
    await createSnapshot(img.node, taken);
    await img.blk.write(0, 65536, pattern(65536, 2));
    await img.close();
    expectClean(file);
    expect(qemuImg('snapshot', '-l', file)).toMatch(/^1         blkio                 0 B \d{4}-\d\d-\d\d /m);
    qemuImg('snapshot', '-a', 'blkio', file);
    qemuIo(file, ['read -P 1 0 128k']);
    expectClean(file);
  });

  it('reads a snapshot through a read-only node only', async () => {
    const file = t.path('b.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', file, '1M');
    qemuIo(file, ['write -P 1 0 64k']);
    qemuImg('snapshot', '-c', 'old', file);
    qemuIo(file, ['write -P 2 0 64k']);
    const writable = await openQcow2(file);
    await expect(loadSnapshotTemporarily(writable.node, undefined, 'old')).rejects.toThrow('Device is not readonly');
    await writable.close();
    const img = await openQcow2(file, false);
    await loadSnapshotTemporarily(img.node, undefined, 'old');
    const buf = new Uint8Array(65536);
    await img.blk.read(0, 65536, buf);
    expect(buf).toEqual(pattern(65536, 1));
    await img.close();
  });

  it('refuses to apply a snapshot while the image has persistent bitmaps, leaving the image as QEMU leaves it', async () => {
    const file = t.path('c.qcow2');
    const theirs = t.path('c-qemu.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', file, '1M');
    qemuImg('snapshot', '-c', 's', file);
    qemuImg('bitmap', '--add', file, 'b0');
    copyFileSync(file, theirs);
    const img = await openQcow2(file);
    expect(listSnapshots(img.node).map((sn) => sn.name)).toEqual(['s']);
    const err = await gotoSnapshot(img.node, 's').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlkioError);
    expect((err as BlkioError).message).toBe('Device has active dirty bitmaps');
    await img.close();
    // The refused apply changes no data; the bitmaps are stored again at close, as QEMU does.
    expect(qemuImgStatus('snapshot', '-a', 's', theirs).status).toBe(1);
    expect(readFileSync(file).equals(readFileSync(theirs))).toBe(true);
  });
});
