import { describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../../src/block/backend.js';
import { BlockLayer } from '../../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ } from '../../../../src/block/permissions.js';
import { runBench } from '../../../../src/commands/img/bench.js';
import { allDrivers } from '../../../../src/drivers/index.js';

describe('img bench request queue', () => {
  it('fails the run with what the layer\'s fatal hook throws at the first failed request', async () => {
    const layer = new BlockLayer(allDrivers);
    layer.fatal = (message) => {
      throw new Error(message);
    };
    const node = await layer.openNode(undefined, { driver: 'null-co', size: 512, 'read-only': 'on' });
    const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ, PERM_ALL);
    try {
      // Each 4 KiB read reaches past the 512-byte image's end.
      const params = {
        count: 4, depth: 2, offset: 0, bufferSize: 4096, step: 4096, write: false, pattern: 0, flushInterval: 0, drainOnFlush: true,
      };
      await expect(runBench(blk, params)).rejects.toThrow(/^blkio: Failed request: /);
    } finally {
      blk.detach();
      await layer.closeAll();
    }
  });
});
