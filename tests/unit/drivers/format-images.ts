/** Creating and opening images of one format in the drivers' unit tests. */
import { BlockBackend } from '../../../src/block/backend.js';
import type { BlockDriver } from '../../../src/block/driver.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { createImageFile } from '../../../src/commands/img/create.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { fileDriver } from '../../../src/drivers/file.js';

/** `qemu-img create -f <driver> -o <options> filename size`, through the file protocol. */
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

/** Open the image with its driver and `options` (writable unless `read-only` is on), use it, close it. */
export async function withImage(
  driver: BlockDriver<any>, filename: string, options: Record<string, string>, use: (blk: BlockBackend) => Promise<void>,
): Promise<void> {
  const layer = new BlockLayer(allDrivers);
  const node = await layer.openNode(filename, { driver: driver.name, ...options });
  const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ | (options['read-only'] === 'on' ? 0 : PERM_WRITE), PERM_ALL);
  try {
    await use(blk);
  } finally {
    blk.detach();
    await layer.closeAll();
  }
}
