import { beforeEach, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import type { BdrvChild } from '../../../src/block/child.js';
import { ROLE_IMAGE, type BlockDriver } from '../../../src/block/driver.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { compressDriver } from '../../../src/drivers/compress.js';
import { rawDriver } from '../../../src/drivers/raw.js';
import { memoryDisks, memoryDriver } from '../helpers/memory-driver.js';

const CLUSTER = 4096;
let compressedWrites: Array<[number, number]>;

/** A format over memory that records its compressed writes (whole clusters, as qcow2 wants). */
const packedDriver: BlockDriver<{ file: BdrvChild }> = {
  name: 'packed',
  kind: 'format',
  options: {},
  open: async (_node, ctx) => ({ file: (await ctx.openChild('file', ROLE_IMAGE))! }),
  getLength: (node) => node.state.file.getLength(),
  getInfo: () => ({ clusterSize: CLUSTER }),
  read: (node, offset, bytes, buf, flags) => node.state.file.read(offset, bytes, buf, flags),
  async writeCompressed(node, offset, bytes, buf) {
    compressedWrites.push([offset, bytes]);
    await node.state.file.write(offset, bytes, buf, 0);
  },
};

describe('compress', () => {
  let layer: BlockLayer;
  beforeEach(() => {
    memoryDisks.clear();
    memoryDisks.set('d', new Uint8Array(4 * CLUSTER).fill(1));
    compressedWrites = [];
    layer = new BlockLayer([memoryDriver, rawDriver, packedDriver, compressDriver]);
  });

  it('refuses a child that cannot compress, naming its format', async () => {
    await expect(layer.openNode(undefined, { driver: 'compress', 'file.driver': 'raw', 'file.file.driver': 'memory', 'file.file.filename': 'd' }))
      .rejects.toThrow('Compression is not supported for underlying format: raw');
  });

  it('writes whole clusters compressed, padding a partial one from what it holds', async () => {
    const node = await layer.openNode(undefined, { driver: 'compress', 'file.driver': 'packed', 'file.file.driver': 'memory', 'file.file.filename': 'd' });
    expect(node.limits.requestAlignment).toBe(CLUSTER);
    const backend = BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    await backend.write(CLUSTER + 100, 10, new Uint8Array(10).fill(2), 0);
    expect(compressedWrites).toEqual([[CLUSTER, CLUSTER]]);
    const disk = memoryDisks.get('d')!;
    expect([disk[CLUSTER + 99], disk[CLUSTER + 100], disk[CLUSTER + 109], disk[CLUSTER + 110]]).toEqual([1, 2, 2, 1]);
  });

  it('has no compressed writes of its own', async () => {
    const node = await layer.openNode(undefined, { driver: 'compress', 'file.driver': 'packed', 'file.file.driver': 'memory', 'file.file.filename': 'd' });
    const backend = BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    await expect(backend.writeCompressed(0, CLUSTER, new Uint8Array(CLUSTER))).rejects.toMatchObject({ code: 'ENOTSUP' });
  });
});
