/**
 * qemu-io `-s` (snapshot mode): writes go to a temporary qcow2 overlay in the temp directory,
 * backed by the opened node; the overlay file disappears when it is closed.  The overlay takes
 * the opened node's discard mode, as QEMU's temporary snapshot inherits it.
 */
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkioError } from '../errors.js';
import { BdrvChild } from './child.js';
import { ROLE_IMAGE } from './driver.js';
import { attachChild, type BlockLayer } from './graph.js';
import type { BlockNode } from './node.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE } from './permissions.js';

export async function createTemporaryOverlay(layer: BlockLayer, base: BlockNode, readOnly: boolean): Promise<BlockNode> {
  const qcow2 = layer.driver('qcow2');
  if (!qcow2?.create) throw new BlkioError('ENOTSUP', "Unknown driver 'qcow2'");
  const dir = await mkdtemp(join(tmpdir(), 'vl.'));
  const filename = join(dir, 'snapshot.qcow2');
  try {
    await (await open(filename, 'w')).close();
    const file = await layer.openNode(filename, {}, { protocol: true, inherited: {} });
    const edge = new BdrvChild({ describe: () => 'temporary snapshot creation' }, 'file', ROLE_IMAGE, file);
    try {
      attachChild(edge, PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL);
      const size = Math.ceil(base.getLength() / 512) * 512;
      await qcow2.create(edge, { filename, size, options: { size } });
      await edge.flush();
    } finally {
      layer.releaseEdge(edge);
      await layer.closeNode(file);
    }
    const overlay = await layer.openNode(undefined, {
      driver: 'qcow2', 'file.driver': 'file', 'file.filename': filename, backing: base.nodeName,
      discard: base.discardUnmap ? 'unmap' : 'ignore',
      // With -r the overlay is as read-only as the image would be (QEMU's snapshot flags).
      ...(readOnly ? { 'read-only': 'on' } : {}),
    });
    return overlay;
  } finally {
    // The open file stays usable until it is closed; the name is gone already.
    await rm(dir, { recursive: true, force: true });
  }
}
