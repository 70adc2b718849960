import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BdrvChild } from '../../../src/block/child.js';
import { ROLE_IMAGE } from '../../../src/block/driver.js';
import { attachChild, BlockLayer, detachChild } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE } from '../../../src/block/permissions.js';
import { allDrivers } from '../../../src/drivers/index.js';

const dir = mkdtempSync(join(tmpdir(), 'blkio-preallocate-'));
const image = join(dir, 'disk.raw');
const MiB = 1 << 20;
afterAll(() => rmSync(dir, { recursive: true, force: true }));
beforeEach(() => writeFileSync(image, Buffer.alloc(MiB)));

async function open(layer: BlockLayer, extra: Record<string, string> = {}) {
  const node = await layer.openNode(undefined, { driver: 'preallocate', 'file.filename': image, 'file.locking': 'off', ...extra });
  return BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL);
}

describe('preallocate', () => {
  it('refuses alignments that are not whole sectors', async () => {
    await expect(open(new BlockLayer(allDrivers), { 'prealloc-align': '3' }))
      .rejects.toThrow('prealloc-align parameter of preallocate filter is not aligned to 512');
  });

  it('extends the file ahead of writes past its end and cuts it back at close', async () => {
    const layer = new BlockLayer(allDrivers);
    const node = await layer.openNode(undefined, {
      driver: 'preallocate', 'file.filename': image, 'file.locking': 'off', 'prealloc-size': '64k', 'prealloc-align': '64k',
    });
    // A parent that may resize (as a format above the filter) writes past the end.
    const edge = new BdrvChild({ describe: () => 'test' }, 'file', ROLE_IMAGE, node);
    attachChild(edge, PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL);
    await edge.write(MiB, 4096, new Uint8Array(4096).fill(1));
    expect(node.getLength()).toBe(MiB + 4096);
    // Up to the write's end plus 64k, rounded up to 64k (where the file zeroes efficiently).
    expect([MiB + 4096, MiB + 131072]).toContain(statSync(image).size);
    detachChild(edge);
    await layer.closeAll();
    expect(statSync(image).size).toBe(MiB + 4096);
  });

  it('keeps the cut across a resize', async () => {
    const layer = new BlockLayer(allDrivers);
    const blk = await open(layer, { 'prealloc-size': '64k' });
    await blk.truncate(2 * MiB, false, 'off');
    expect(blk.node.getLength()).toBe(2 * MiB);
    blk.detach();
    await layer.closeAll();
    expect(statSync(image).size).toBe(2 * MiB);
  });
});
