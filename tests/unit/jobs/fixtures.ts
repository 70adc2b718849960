/**
 * Chains of `memcow` images for the job tests: memcow plus the two hooks jobs use
 * (changeBackingFile, makeEmpty), and helpers to fill layers and read a node's whole view.
 */
import { BlockBackend } from '../../../src/block/backend.js';
import type { BlockDriver } from '../../../src/block/driver.js';
import { BlockLayer } from '../../../src/block/graph.js';
import type { BlockNode } from '../../../src/block/node.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { copyOnReadDriver } from '../../../src/drivers/copy-on-read.js';
import { mirrorTopDriver } from '../../../src/drivers/mirror-top.js';
import { memCowDriver, memoryDisks, memoryDriver, type MemCowState, type MemoryState } from '../helpers/memory-driver.js';

export const CLUSTER = 65536;
export const SIZE = 64 * CLUSTER;

export const relinks: Array<{ node: string; filename: string; format: string }> = [];

const memCowWithHooks: BlockDriver<MemCowState> = {
  ...memCowDriver,
  async changeBackingFile(node, filename, format) {
    node.backingFile = filename;
    node.backingFormat = format;
    relinks.push({ node: node.nodeName, filename, format });
  },
  async makeEmpty(node) {
    node.state.allocated.fill(0);
    node.state.zero.fill(0);
  },
};

/** `memory` whose reads take their data at once but complete a macrotask later (races show). */
const slowMemoryDriver: BlockDriver<MemoryState> = {
  ...memoryDriver,
  name: 'slowmemory',
  async read(node, offset, bytes, buf, flags) {
    await memoryDriver.read!(node, offset, bytes, buf, flags);
    await new Promise((r) => setImmediate(r));
  },
};

export function newLayer(): BlockLayer {
  memoryDisks.clear();
  relinks.length = 0;
  return new BlockLayer([memoryDriver, slowMemoryDriver, memCowWithHooks, copyOnReadDriver, mirrorTopDriver]);
}

/** Open memcow images named as given, each backed by the previous one; returns them bottom first. */
export async function openChain(layer: BlockLayer, names: string[], size = SIZE, protocol = 'memory'): Promise<BlockNode[]> {
  const nodes: BlockNode[] = [];
  for (const name of names) {
    memoryDisks.set(name, new Uint8Array(size));
    nodes.push(await layer.openNode(undefined, {
      driver: 'memcow', 'node-name': name, 'file.driver': protocol, 'file.filename': name,
      backing: nodes.length ? nodes[nodes.length - 1].nodeName : null,
      ...(nodes.length ? { backing_file: `${nodes[nodes.length - 1].nodeName}.img` } : {}),
    }));
  }
  return nodes;
}

/** Write `pattern` into `node` at whole clusters [first, first+count). */
export async function fill(node: BlockNode, first: number, count: number, pattern: number): Promise<void> {
  const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
  await blk.write(first * CLUSTER, count * CLUSTER, new Uint8Array(count * CLUSTER).fill(pattern));
  blk.detach();
}

/** The whole disk as `node` shows it. */
export async function readAll(node: BlockNode): Promise<Uint8Array> {
  const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ, PERM_ALL);
  const buf = new Uint8Array(node.getLength());
  await blk.read(0, buf.length, buf);
  blk.detach();
  return buf;
}

/** Clusters of `node` allocated in that layer itself, as a string of 0/1/z. */
export function allocationMap(node: BlockNode): string {
  const s = node.state as MemCowState;
  return Array.from(s.allocated, (a, i) => (s.zero[i] ? 'z' : a ? '1' : '0')).join('');
}

/** Offset of the first differing byte, or -1 (vitest's deep equality is far too slow for disks). */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length))) return -1;
  let i = 0;
  while (i < Math.min(a.length, b.length) && a[i] === b[i]) i++;
  return i;
}
