import { beforeEach, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { blkverifyDriver } from '../../../src/drivers/blkverify.js';
import { memoryDisks, memoryDriver } from '../helpers/memory-driver.js';

class Exit extends Error {}

describe('blkverify', () => {
  let layer: BlockLayer;
  beforeEach(() => {
    memoryDisks.clear();
    memoryDisks.set('raw', new Uint8Array(8192).fill(1));
    memoryDisks.set('test', new Uint8Array(8192).fill(1));
    layer = new BlockLayer([memoryDriver, blkverifyDriver]);
    layer.fatal = (message) => {
      throw new Exit(message);
    };
  });

  async function open(): Promise<BlockBackend> {
    const node = await layer.openNode(undefined, {
      driver: 'blkverify', 'raw.driver': 'memory', 'raw.filename': 'raw', 'test.driver': 'memory', 'test.filename': 'test',
    });
    return BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
  }

  it('needs both children', async () => {
    await expect(layer.openNode(undefined, { driver: 'blkverify', 'test.driver': 'memory' }))
      .rejects.toThrow('A block device must be specified for "raw"');
    expect(() => blkverifyDriver.parseFilename!('blkverify:a.raw', {}))
      .toThrow('blkverify requires raw copy and original image path');
  });

  it('reads when both agree and ends the program at the first difference', async () => {
    const blk = await open();
    const buf = new Uint8Array(100);
    await blk.read(4000, 100, buf);
    expect(buf.every((b) => b === 1)).toBe(true);
    memoryDisks.get('test')![4096 + 7] = 2;
    await expect(blk.read(4000, 200, new Uint8Array(200))).rejects.toThrow('blkverify: read offset=4000 bytes=200 contents mismatch at offset 4103');
  });

  it('writes to both images', async () => {
    const blk = await open();
    await blk.write(512, 512, new Uint8Array(512).fill(9));
    expect(memoryDisks.get('raw')![600]).toBe(9);
    expect(memoryDisks.get('test')![600]).toBe(9);
  });

  it('takes its length from the image under test', async () => {
    memoryDisks.set('test', new Uint8Array(16384));
    const blk = await open();
    expect(blk.getLength()).toBe(16384);
  });
});
