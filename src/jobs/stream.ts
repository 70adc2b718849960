/**
 * Stream: pull the data of the images between `top` and `base` up into `top`, then make
 * `base` top's backing file. The copying is the copy-on-read filter's job: the stream inserts
 * one above `top` (with `bottom` = the image directly above the base, so nothing from the base
 * itself is copied) and reads the disk through it with PREFETCH, skipping what top already
 * holds. Interrupted, it leaves a valid image that merely holds some data twice; run again, it
 * continues where it stopped.
 */
import { BlkioError } from '../errors.js';
import { replaceChildNode, type BlockLayer } from '../block/graph.js';
import { isAllocated } from '../block/io.js';
import type { BlockNode } from '../block/node.js';
import { REQ_PREFETCH } from '../block/flags.js';
import { PERM_ALL, PERM_CONSISTENT_READ } from '../block/permissions.js';
import { backingNameFrom, overlayAbove, STATUS_LOOKAHEAD } from './chain.js';
import { Job, type JobOptions } from './job.js';

export interface StreamOptions extends JobOptions {
  /** The image to keep as the backing file; undefined streams the whole chain. */
  base?: BlockNode;
  /** The backing file name to record (default: the base's path relative to top's directory). */
  backingFile?: string;
}

export async function stream(layer: BlockLayer, top: BlockNode, options: StreamOptions = {}): Promise<void> {
  if (!top.backing) return;
  const base = options.base;
  const baseOverlay = overlayAbove(top, base);
  const backingName = base ? options.backingFile ?? backingNameFrom(top.filename, base.filename) : '';
  const backingFormat = base ? base.driver.name : '';
  if (!top.driver.changeBackingFile) {
    throw new BlkioError('ENOTSUP', `Could not change the backing file to '${backingName}': Operation not supported`);
  }

  const job = new Job(layer, options);
  await job.run(async () => {
    const length = top.getLength();
    job.setTotal(length);
    // With the base directly below top there is nothing to copy (a copy-on-read filter with
    // top as its bottom would copy the base itself); only the backing file name is written again.
    if (baseOverlay === top) return job.advance(length);
    const filter = await job.insertFilter(top, { driver: 'copy-on-read', bottom: baseOverlay.nodeName });
    const reader = job.attach(filter, PERM_CONSISTENT_READ, PERM_ALL);
    // PREFETCH: the data is only copied, never returned, so all requests share one buffer.
    const scratch = new Uint8Array(job.chunkSize);
    async function* unallocatedInTop() {
      for (let offset = 0; offset < length;) {
        const { allocated, pnum } = await isAllocated(top, offset, Math.min(STATUS_LOOKAHEAD, length - offset));
        const bytes = allocated ? pnum : Math.min(pnum, job.chunkSize);
        if (allocated) job.advance(bytes);
        else yield { offset, bytes };
        offset += bytes;
      }
    }
    await job.forEachInFlight(unallocatedInTop(), ({ offset, bytes }) =>
      reader.read(offset, bytes, scratch.subarray(0, bytes), REQ_PREFETCH),
    );
    await reader.flush();
  });
  await relink(layer, top, base, backingName, backingFormat);
}

/** Make `base` (or nothing) top's backing file, in the graph and in top's header. */
async function relink(layer: BlockLayer, top: BlockNode, base: BlockNode | undefined, name: string, format: string): Promise<void> {
  const edge = top.backing!;
  const dropped = edge.node;
  if (dropped !== base) {
    if (base) replaceChildNode(edge, base);
    else layer.releaseEdge(edge);
    if (dropped.parents.length === 0) await layer.closeNode(dropped);
  }
  await top.driver.changeBackingFile!(top, name, format);
}
