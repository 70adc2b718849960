/** Images for driver tests: made as `qemu-img create` makes them, opened writable through a backend. */
import { BlockBackend } from '../../../src/block/backend.js';
import type { BlockDriver } from '../../../src/block/driver.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { createImageFile } from '../../../src/commands/img/create.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { fileDriver } from '../../../src/drivers/file.js';

/** Create an image of `driver` in a new host file; `layer` holds any objects the options name. */
export async function createImage(
  driver: BlockDriver<any>, filename: string, size: number, options: Record<string, string | number | boolean> = {},
  layer = new BlockLayer(allDrivers),
): Promise<void> {
  try {
    await createImageFile(layer, driver, fileDriver, { filename, size, options: { size, ...options } });
  } finally {
    await layer.closeAll();
  }
}

/** Open `filename` with `options` (driver included), run `use` on a writable backend, close it all. */
export async function withImage(
  filename: string, options: Record<string, string>, use: (blk: BlockBackend) => Promise<void>, layer = new BlockLayer(allDrivers),
): Promise<void> {
  try {
    const node = await layer.openNode(filename, options);
    const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    try {
      await use(blk);
    } finally {
      blk.detach();
    }
  } finally {
    await layer.closeAll();
  }
}
