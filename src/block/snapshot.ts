/**
 * qemu-io `-s` (snapshot mode): writes go to a temporary qcow2 overlay in the temp directory,
 * backed by the opened node; the overlay file disappears when it is closed.  The overlay takes
 * the opened node's discard mode, as QEMU's temporary snapshot inherits it.
 */
import { open, rm, type FileHandle } from 'node:fs/promises';
import { BlkioError, toBlkioError } from '../errors.js';
import { BdrvChild } from './child.js';
import { ROLE_IMAGE } from './driver.js';
import { attachChild, type BlockLayer } from './graph.js';
import type { BlockNode } from './node.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE } from './permissions.js';

const NAME_CHARACTERS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/**
 * A new empty file named as QEMU names its temporary snapshots (mkstemp's `$TMPDIR/vl.XXXXXX`,
 * /var/tmp without TMPDIR): a reopen that opens the file again by name names it.
 */
async function createTemporaryFile(): Promise<string> {
  const dir = process.env.TMPDIR || '/var/tmp';
  for (;;) {
    let suffix = '';
    for (let i = 0; i < 6; i++) suffix += NAME_CHARACTERS[Math.floor(Math.random() * NAME_CHARACTERS.length)];
    const filename = `${dir}/vl.${suffix}`;
    let handle: FileHandle;
    try {
      handle = await open(filename, 'wx', 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw toBlkioError(e).prepend(`Could not open temporary file '${filename}': `);
    }
    await handle.close();
    return filename;
  }
}

export async function createTemporaryOverlay(layer: BlockLayer, base: BlockNode, readOnly: boolean): Promise<BlockNode> {
  const qcow2 = layer.driver('qcow2');
  if (!qcow2?.create) throw new BlkioError('ENOTSUP', "Unknown driver 'qcow2'");
  const filename = await createTemporaryFile();
  try {
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
    await rm(filename, { force: true });
  }
}
