import { mkdirSync, readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { createImageFile } from '../../../src/commands/img/create.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { fileDriver } from '../../../src/drivers/file.js';
import { vmdkDriver } from '../../../src/drivers/vmdk/index.js';
import { descriptorCid, parseExtentLines, withCid } from '../../../src/drivers/vmdk/descriptor.js';
import { haveQemu, qemuImg, qemuImgStatus, qemuIo, tempDir } from './qcow2/helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());

describe('vmdk descriptor', () => {
  it('reads extent lines as QEMU sscanf pattern does, skipping what it skips', () => {
    const desc = 'RW 2048 FLAT "a b.img" 16\nRDONLY 8 FLAT "x" 0\nRW 0 FLAT "x" 0\nRW 8 ZERO "x"\nRW 4096 SPARSE "s.vmdk"\r\n';
    expect(parseExtentLines(desc)).toEqual([
      { sectors: 2048, type: 'FLAT', filename: 'a b.img', flatOffset: 16 },
      { sectors: 4096, type: 'SPARSE', filename: 's.vmdk', flatOffset: 0 },
    ]);
    expect(() => parseExtentLines('RW 8 FLAT "x"\n')).toThrow('Invalid extent line: RW 8 FLAT "x"');
    expect(() => parseExtentLines('RW 8 SPARSE "x" 3\n')).toThrow('Invalid extent line: RW 8 SPARSE "x" 3');
  });

  it('finds CIDs (parentCID too) and rewrites the CID line before parentCID', () => {
    const text = 'version=1\nCID=1a2b\nparentCID=ffffffff\ncreateType="monolithicFlat"\n';
    expect(descriptorCid(text, 'CID')).toBe(0x1a2b);
    expect(descriptorCid(text, 'parentCID')).toBe(0xffffffff);
    const updated = withCid(Buffer.from(text, 'latin1'), 0xabc)!;
    expect(Buffer.from(updated.subarray(0, text.length - 1)).toString('latin1')).toBe('version=1\nCID=abc\nparentCID=ffffffff\ncreateType="monolithicFlat"\n');
  });
});

async function createVmdk(filename: string, size: number, options: Record<string, string | boolean> = {}): Promise<void> {
  const layer = new BlockLayer(allDrivers);
  try {
    await createImageFile(layer, vmdkDriver, fileDriver, { filename, size, options: { size, ...options } });
  } finally {
    await layer.closeAll();
  }
}

/** The file without the descriptor's CID line (random, in as many hex digits as it needs) and its zero bytes. */
function layout(filename: string): string {
  return readFileSync(filename).toString('latin1').replace(/CID=[0-9a-f]+\n/, '').replaceAll('\0', '');
}

describe.skipIf(!haveQemu)('vmdk against QEMU 7.2', () => {
  it('creates, allocates and zeroes grains as qemu-img and qemu-io do', async () => {
    // The same name in two directories: the descriptor names its own file.
    mkdirSync(tmp.path('ours'));
    mkdirSync(tmp.path('theirs'));
    const ours = tmp.path('ours/disk.vmdk');
    const theirs = tmp.path('theirs/disk.vmdk');
    await createVmdk(ours, 5 << 20, { zeroed_grain: true });
    qemuImg('create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', theirs, '5M');
    const layer = new BlockLayer(allDrivers);
    const node = await layer.openNode(ours, { driver: 'vmdk' });
    const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    await blk.write(1000, 5000, new Uint8Array(5000).fill(0x11));
    await blk.write(3 << 20, 4096, new Uint8Array(4096).fill(0x22));
    await blk.writeZeroes(1 << 20, 128 << 10);
    blk.detach();
    await layer.closeAll();
    qemuIo(theirs, ['write -P 0x11 1000 5000', 'write -P 0x22 3M 4k', 'write -z 1M 128k'], 'vmdk');
    expect(layout(ours) === layout(theirs)).toBe(true);
    expect(qemuImgStatus('compare', ours, theirs).status).toBe(0);
  });
});
