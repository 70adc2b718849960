/**
 * The blkio library: open block graphs from option strings and issue requests against them.
 *
 *   import { BlockLayer, allDrivers, openImage } from 'blkio';
 *   const layer = new BlockLayer(allDrivers);
 *   const { blk } = await openImage(layer, { filename: 'disk.qcow2', format: 'qcow2' });
 *   const buf = new Uint8Array(65536);
 *   await blk.read(0, buf.length, buf);
 *   await layer.closeAll();
 */
export { BlkioError, STRERROR, type Errno } from './errors.js';
export { BlockLayer, OpenContext, type OpenFlags } from './block/graph.js';
export { BlockNode, type BlockLimits } from './block/node.js';
export { BdrvChild } from './block/child.js';
export { BlockBackend } from './block/backend.js';
export * from './block/driver.js';
export * from './block/flags.js';
export * from './block/permissions.js';
export { nodeBlockStatus, isAllocated, isAllocatedAbove } from './block/io.js';
export { blockdevDefinitions, jsonFilename, nestedDefinition } from './block/describe.js';
export { allDrivers } from './drivers/index.js';
export { openImage, type ImageOpenRequest, type OpenedImage } from './cli/open-image.js';
export { openBlockdevs, openDrives, openGraph, graphImage, type Drive, type GraphDefinitions, type OpenedGraph } from './cli/open-graph.js';
export * as options from './options/index.js';
