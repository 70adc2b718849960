/**
 * Block status of a whole backing chain (QEMU's bdrv_block_status_above): the answer of the
 * first layer from the top that has the range allocated, with the EOF bit only when the range
 * reaches the end of the top image. Layers are asked one at a time through nodeBlockStatus.
 */
import type { BlockStatusResult } from '../../block/driver.js';
import type { BlockNode } from '../../block/node.js';
import { nodeBlockStatus } from '../../block/io.js';
import { STATUS_ALLOCATED, STATUS_EOF, STATUS_ZERO } from '../../block/flags.js';
import { backingLayer, skipFilters } from './common.js';

/** One layer's status, with EOF set when the answer reaches the end of that layer. */
export async function layerStatus(node: BlockNode, offset: number, bytes: number): Promise<BlockStatusResult> {
  const r = await nodeBlockStatus(node, offset, bytes);
  if (r.pnum > 0 && offset + r.pnum === node.getLength()) return { ...r, status: r.status | STATUS_EOF };
  return r;
}

/**
 * Status of [offset, offset+bytes) seen through `top` down to, but not including, `base`
 * (undefined: the whole chain). `pnum` is never 0 inside the top image.
 */
export async function chainBlockStatus(
  topNode: BlockNode, base: BlockNode | undefined, offset: number, bytes: number,
): Promise<BlockStatusResult> {
  const top = skipFilters(topNode);
  if (top === base) return { status: 0, pnum: bytes };
  let r = await layerStatus(top, offset, bytes);
  if (r.pnum === 0 || r.status & STATUS_ALLOCATED) return r;
  const eof = r.status & STATUS_EOF ? offset + r.pnum : -1;
  bytes = r.pnum;
  for (let layer = backingLayer(top); layer && layer !== base; layer = backingLayer(layer)) {
    const below = await layerStatus(layer, offset, bytes);
    if (below.pnum === 0) {
      // A short backing file: the zeroes past its end count as allocated in that layer.
      r = { status: STATUS_ZERO | STATUS_ALLOCATED, pnum: bytes, file: layer };
      break;
    }
    r = below;
    if (r.status & STATUS_ALLOCATED) {
      r = { ...r, status: r.status & ~STATUS_EOF };
      break;
    }
    bytes = r.pnum;
  }
  if (offset + r.pnum === eof) r = { ...r, status: r.status | STATUS_EOF };
  return r;
}
