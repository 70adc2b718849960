/**
 * Internal snapshots through the graph (QEMU's bdrv_snapshot_*): the node whose driver keeps
 * them is the node itself, or, for a driver without snapshots, what its primary child offers
 * when that child is the only one holding the node's data.
 */
import { BlkioError } from '../errors.js';
import { ROLE_DATA, ROLE_FILTERED, ROLE_METADATA, type SnapshotInfo } from './driver.js';
import type { BlockNode } from './node.js';

function fallbackChild(node: BlockNode): BlockNode | undefined {
  const primary = node.primaryChild;
  if (!primary) return undefined;
  const others = node.children.some((c) => c !== primary && c.role & (ROLE_DATA | ROLE_METADATA | ROLE_FILTERED));
  return others ? undefined : primary.node;
}

/** The node that keeps `node`'s internal snapshots, if any does. */
export function snapshotNode(node: BlockNode): BlockNode | undefined {
  let n: BlockNode | undefined = node;
  while (n && !n.driver.snapshotList) n = fallbackChild(n);
  return n;
}

/** The snapshots of `node`; ENOTSUP when nothing below keeps any. */
export function listSnapshots(node: BlockNode): SnapshotInfo[] {
  const n = snapshotNode(node);
  if (!n) throw new BlkioError('ENOTSUP');
  return n.driver.snapshotList!(n);
}

/** bdrv_snapshot_find: the first snapshot with this name (IDs are not searched). */
export function findSnapshotByName(node: BlockNode, name: string): SnapshotInfo | undefined {
  const n = snapshotNode(node);
  return n ? n.driver.snapshotList!(n).find((sn) => sn.name === name) : undefined;
}

export async function createSnapshot(node: BlockNode, info: Omit<SnapshotInfo, 'id'>): Promise<void> {
  const n = snapshotNode(node);
  if (!n?.driver.snapshotCreate) throw new BlkioError('ENOTSUP');
  await n.driver.snapshotCreate(n, info);
}

/** Revert to a snapshot (by ID, else by name), with bdrv_snapshot_goto's error texts. */
export async function gotoSnapshot(node: BlockNode, idOrName: string): Promise<void> {
  // The drivers passed on the way down are opened again afterwards, innermost first.
  const passed: BlockNode[] = [];
  for (let layer: BlockNode | undefined = node; layer && !layer.driver.snapshotList; layer = fallbackChild(layer)) passed.unshift(layer);
  try {
    await gotoSnapshotBelow(node, idOrName);
  } finally {
    for (const layer of passed) layer.driver.warnAgainAfterSnapshotGoto?.(layer);
  }
}

async function gotoSnapshotBelow(node: BlockNode, idOrName: string): Promise<void> {
  const n = snapshotNode(node);
  // Persistent bitmaps track the current state; reverting would make them lie.
  for (const layer of new Set([node, n])) {
    if (layer && (await layer.driver.persistentBitmaps?.(layer))?.length) {
      throw new BlkioError('EBUSY', 'Device has active dirty bitmaps');
    }
  }
  if (!n?.driver.snapshotGoto) throw new BlkioError('ENOTSUP', 'Block driver does not support snapshots');
  try {
    await n.driver.snapshotGoto(n, idOrName);
  } catch (e) {
    throw e instanceof BlkioError ? e.prepend('Failed to load snapshot: ') : e;
  }
}

export async function deleteSnapshot(node: BlockNode, id: string, name: string): Promise<void> {
  const n = snapshotNode(node);
  if (!n?.driver.snapshotDelete) throw new BlkioError('ENOTSUP');
  await n.driver.snapshotDelete(n, id, name);
}

/** bdrv_snapshot_load_tmp: read a snapshot through a read-only node (no fallback to a child). */
export async function loadSnapshotTemporarily(node: BlockNode, id: string | undefined, name: string | undefined): Promise<void> {
  if (id === undefined && name === undefined) throw new BlkioError('EINVAL', 'snapshot_id and name are both NULL');
  if (!node.readOnly) throw new BlkioError('EINVAL', 'Device is not readonly');
  if (!node.driver.snapshotLoadTmp) {
    throw new BlkioError('ENOTSUP',
      `Block format '${node.driver.name}' used by device '' does not support temporarily loading internal snapshots`);
  }
  await node.driver.snapshotLoadTmp(node, id, name);
}

/** The snapshot with this ID, else the one with this name. */
export async function loadSnapshotTemporarilyByIdOrName(node: BlockNode, idOrName: string): Promise<void> {
  try {
    await loadSnapshotTemporarily(node, idOrName, undefined);
  } catch (e) {
    if (!(e instanceof BlkioError) || (e.code !== 'ENOENT' && e.code !== 'EINVAL')) throw e;
    await loadSnapshotTemporarily(node, undefined, idOrName);
  }
}
