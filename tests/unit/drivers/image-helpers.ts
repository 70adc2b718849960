/** Making and opening images of one format driver in the unit tests, through the library as the CLI does. */
import { BlockBackend } from '../../../src/block/backend.js';
import type { BlockDriver } from '../../../src/block/driver.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { createImageFile } from '../../../src/commands/img/create.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { fileDriver } from '../../../src/drivers/file.js';

/** Create `filename` as an image of `driver`'s format with these create options (size included). */
export async function createImage(
  driver: BlockDriver<any>, filename: string, size: number, options: Record<string, string | number | boolean> = {},
): Promise<void> {
  const layer = new BlockLayer(allDrivers);
  try {
    await createImageFile(layer, driver, fileDriver, { filename, size, options: { size, ...options } });
  } finally {
    await layer.closeAll();
  }
}

/**
 * Open `filename` with format `driver` and further `options` (read-write unless `read-only` is
 * on), run `use` on a root user of it, and close it again.
 */
export async function withImage(
  driver: string, filename: string, use: (blk: BlockBackend) => Promise<void>, options: Record<string, string> = {},
): Promise<void> {
  const layer = new BlockLayer(allDrivers);
  const node = await layer.openNode(filename, { driver, ...options });
  const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ | (options['read-only'] === 'on' ? 0 : PERM_WRITE), PERM_ALL);
  try {
    await use(blk);
  } finally {
    blk.detach();
    await layer.closeAll();
  }
}
