import { describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { mirror } from '../../../src/jobs/mirror.js';
import { allocationMap, CLUSTER, fill, firstDifference, newLayer, openChain, readAll, SIZE } from './fixtures.js';

async function sourceAndTarget(targetBacking: 'none' | 'base' | 'source' = 'none', protocol = 'memory') {
  const layer = newLayer();
  const [base, source] = await openChain(layer, ['base', 'source'], SIZE, protocol);
  await fill(base, 0, 32, 1);
  await fill(source, 16, 32, 2);
  const backing = targetBacking === 'none' ? null : targetBacking;
  const target = await layer.openNode(undefined, {
    driver: 'memcow', 'node-name': 'target', 'file.driver': 'memory', 'file.filename': 'target', 'file.size': SIZE, backing,
  });
  return { layer, base, source, target };
}

describe('mirror', () => {
  it('copies the whole view with sync=full, skipping holes', async () => {
    const { layer, source, target } = await sourceAndTarget();
    await mirror(layer, source, target, { chunkSize: 4 * CLUSTER });
    expect(firstDifference(await readAll(target), await readAll(source))).toBe(-1);
    expect(allocationMap(target)).toBe('1'.repeat(48) + '0'.repeat(16));
    expect(source.parents).toHaveLength(0);
    expect(target.parents).toHaveLength(0);
  });

  it('copies only the top layer with sync=top', async () => {
    const { layer, source, target } = await sourceAndTarget('base');
    await mirror(layer, source, target, { sync: 'top' });
    expect(allocationMap(target)).toBe('0'.repeat(16) + '1'.repeat(32) + '0'.repeat(16));
    expect(firstDifference(await readAll(target), await readAll(source))).toBe(-1);
  });

  it('keeps source and target identical while writes arrive during the copy', async () => {
    const { layer, source, target } = await sourceAndTarget('none', 'slowmemory');
    const guest = BlockBackend.attach(source, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    let copying = true;
    let cursor = 0;
    let writesDuringCopy = 0;
    const writer = (async () => {
      // Write where the job is copying right now (chunks in flight), never again behind it.
      for (let i = 0; copying; i++) {
        const cluster = Math.min(62, Math.floor(cursor / CLUSTER) + (i % 3));
        if (i % 5 === 4) await guest.writeZeroes(cluster * CLUSTER, 2 * CLUSTER);
        else await guest.write(cluster * CLUSTER, 2 * CLUSTER, new Uint8Array(2 * CLUSTER).fill(100 + (i % 100)));
        writesDuringCopy++;
        await new Promise((r) => setImmediate(r));
      }
    })();
    const total = source.getLength();
    await mirror(layer, source, target, {
      chunkSize: CLUSTER, inFlight: 4, rateLimit: 20 << 20,
      onProgress: (done) => {
        cursor = done;
        copying = done < total;
      },
    });
    await writer;
    expect(writesDuringCopy).toBeGreaterThan(10);
    expect(guest.root.node).toBe(source);
    expect(firstDifference(await readAll(target), await readAll(source))).toBe(-1);
  });

  it('with sync=none forwards only new writes', async () => {
    const { layer, source, target } = await sourceAndTarget('source');
    await mirror(layer, source, target, { sync: 'none' });
    expect(allocationMap(target)).toBe('0'.repeat(64));
  });
});
