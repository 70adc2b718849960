import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockLayer } from '../../../src/block/graph.js';
import { openImage } from '../../../src/cli/open-image.js';
import { allDrivers } from '../../../src/drivers/index.js';

describe('openImage -C', () => {
  let dir: string;
  let layer: BlockLayer;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'blkio-open-image-'));
    writeFileSync(join(dir, 'disk.raw'), new Uint8Array(65536));
    layer = new BlockLayer(allDrivers);
  });
  afterEach(async () => {
    await layer.closeAll();
    rmSync(dir, { recursive: true, force: true });
  });

  // QEMU's -C is a flag on the root node: discards must not stop at blkio's implicit filter.
  for (const [discard, unmap] of [[undefined, true], ['unmap', true], ['ignore', false], ['off', false]] as const) {
    it(`gives the implicit copy-on-read filter the root's discard mode (${discard ?? 'default'})`, async () => {
      const { blk } = await openImage(layer, { filename: join(dir, 'disk.raw'), format: 'raw', copyOnRead: true, discard });
      const filter = blk.root.node;
      expect(filter.driver.name).toBe('copy-on-read');
      expect(filter.implicit).toBe(true);
      expect(filter.discardUnmap).toBe(unmap);
      expect(filter.filteredChild!.node.discardUnmap).toBe(unmap);
      blk.detach();
    });
  }

  // QEMU refuses -C on a read-only root; with -s the root is the writable temporary overlay.
  it('copies on read into the temporary overlay of -s, and refuses -s -r', async () => {
    const { blk } = await openImage(layer, { filename: join(dir, 'disk.raw'), format: 'raw', copyOnRead: true, snapshot: true });
    expect(blk.root.node.driver.name).toBe('copy-on-read');
    expect(blk.root.node.filteredChild!.node.driver.name).toBe('qcow2');
    blk.detach();
    await expect(
      openImage(layer, { filename: join(dir, 'disk.raw'), format: 'raw', copyOnRead: true, snapshot: true, readOnly: true }),
    ).rejects.toThrow("Can't use copy-on-read on read-only device");
  });
});
