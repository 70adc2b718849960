import { afterAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ } from '../../../src/block/permissions.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { fileAllocatedSize, readBytes, view } from '../../../src/drivers/format-helpers.js';
import { tempDir } from './qcow2/helpers.js';

const tmp = tempDir();
afterAll(() => tmp.remove());

describe('format helpers', () => {
  it('view covers only the window a subarray is', () => {
    const whole = new Uint8Array([1, 2, 3, 4, 5, 6]);
    const v = view(whole.subarray(2, 4));
    expect(v.byteLength).toBe(2);
    expect(v.getUint16(0, false)).toBe(0x0304);
  });

  it('readBytes reads a range of a child; fileAllocatedSize asks the file', async () => {
    const path = tmp.path('bytes.raw');
    writeFileSync(path, Buffer.from('abcdefgh'));
    const layer = new BlockLayer(allDrivers);
    try {
      const node = await layer.openNode(path, { driver: 'file' });
      const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ, PERM_ALL);
      expect(Buffer.from(await readBytes(blk.root, 2, 3)).toString()).toBe('cde');
      expect(await fileAllocatedSize(blk.root)).toBe(await node.driver.allocatedSize!(node));
    } finally {
      await layer.closeAll();
    }
  });
});
