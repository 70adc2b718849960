import { execFileSync } from 'node:child_process';
import { copyFileSync, readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { REQ_WRITE_UNCHANGED, REQUEST_MAX_BYTES } from '../../../src/block/flags.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { isAllocated } from '../../../src/block/io.js';
import { copyOnReadDriver } from '../../../src/drivers/copy-on-read.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { rawDriver } from '../../../src/drivers/raw.js';
import { haveQemu, qemuImg, qemuIo, tempDir } from '../drivers/qcow2/helpers.js';
import { memCowDriver, memoryDisks, memoryDriver, type MemoryState } from '../helpers/memory-driver.js';

const CLUSTER = 65536;

function newLayer(): BlockLayer {
  return new BlockLayer([memoryDriver, memCowDriver, rawDriver, copyOnReadDriver]);
}

/** base (pattern 0x11 everywhere) <- top (memcow, empty) */
async function chain(layer: BlockLayer, size = 8 * CLUSTER) {
  memoryDisks.set('base', new Uint8Array(size).fill(0x11));
  memoryDisks.set('top', new Uint8Array(size));
  await layer.openNode(undefined, { driver: 'memory', filename: 'base', 'node-name': 'base' });
  return layer.openNode(undefined, {
    driver: 'memcow', 'node-name': 'top', 'file.driver': 'memory', 'file.filename': 'top', backing: 'base',
  });
}

describe('copy-on-read', () => {
  let layer: BlockLayer;
  beforeEach(() => {
    memoryDisks.clear();
    layer = newLayer();
  });

  it('copies whole clusters with WRITE_UNCHANGED through a filter, for a read-only user', async () => {
    await chain(layer);
    const cor = await layer.openNode(undefined, { driver: 'copy-on-read', 'node-name': 'cor', file: 'top' });
    const blk = BlockBackend.attach(cor, PERM_CONSISTENT_READ, PERM_ALL);
    const buf = new Uint8Array(100);
    await blk.read(CLUSTER + 10, 100, buf);
    expect(buf.every((b) => b === 0x11)).toBe(true);
    const top = layer.findNode('top')!;
    expect(await isAllocated(top, CLUSTER, CLUSTER)).toEqual({ allocated: true, pnum: CLUSTER });
    expect(await isAllocated(top, 0, CLUSTER)).toEqual({ allocated: false, pnum: CLUSTER });
    const file = top.file!.node as unknown as { state: MemoryState };
    expect(file.state.writes).toHaveLength(1);
    expect(file.state.writes[0]).toMatchObject({ offset: CLUSTER, bytes: CLUSTER });
  });

  it('never rewrites clusters that are already allocated', async () => {
    const top = await chain(layer);
    const writer = BlockBackend.attach(top, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    await writer.write(0, CLUSTER, new Uint8Array(CLUSTER).fill(0x22));
    writer.detach();
    const cor = await layer.openNode(undefined, { driver: 'copy-on-read', file: 'top' });
    const blk = BlockBackend.attach(cor, PERM_CONSISTENT_READ, PERM_ALL);
    const buf = new Uint8Array(2 * CLUSTER);
    await blk.read(0, 2 * CLUSTER, buf);
    expect(buf[0]).toBe(0x22);
    expect(buf[CLUSTER]).toBe(0x11);
    const writes = (top.file!.node as unknown as { state: MemoryState }).state.writes;
    expect(writes.map((w) => w.offset)).toEqual([0, CLUSTER]);
  });

  it('writes all-zero data as zero writes', async () => {
    memoryDisks.set('base', new Uint8Array(4 * CLUSTER));
    memoryDisks.set('top', new Uint8Array(4 * CLUSTER));
    await layer.openNode(undefined, { driver: 'memory', filename: 'base', 'node-name': 'base' });
    const top = await layer.openNode(undefined, { driver: 'memcow', 'node-name': 'top', 'file.driver': 'memory', 'file.filename': 'top', backing: 'base' });
    const cor = await layer.openNode(undefined, { driver: 'copy-on-read', file: 'top' });
    await BlockBackend.attach(cor, PERM_CONSISTENT_READ, PERM_ALL).read(0, 4 * CLUSTER, new Uint8Array(4 * CLUSTER));
    expect((top.state as { zero: Uint8Array }).zero).toEqual(new Uint8Array([1, 1, 1, 1]));
  });

  it('serialises concurrent overlapping reads so each cluster is copied once', async () => {
    const top = await chain(layer);
    const cor = await layer.openNode(undefined, { driver: 'copy-on-read', file: 'top' });
    const blk = BlockBackend.attach(cor, PERM_CONSISTENT_READ, PERM_ALL);
    await Promise.all([0, 1000, 5000, CLUSTER - 1].map((off) => blk.read(off, 4096, new Uint8Array(4096))));
    const writes = (top.file!.node as unknown as { state: MemoryState }).state.writes;
    expect(writes.filter((w) => w.offset === 0)).toHaveLength(1);
  });

  it('passes through raw without offset (a filter), forwarding WRITE_UNCHANGED', async () => {
    await chain(layer);
    await layer.openNode(undefined, { driver: 'raw', 'node-name': 'raw', file: 'top' });
    const cor = await layer.openNode(undefined, { driver: 'copy-on-read', file: 'raw' });
    const blk = BlockBackend.attach(cor, PERM_CONSISTENT_READ, PERM_ALL);
    await blk.read(0, 10, new Uint8Array(10));
    const writes = (layer.findNode('top')!.file!.node as unknown as { state: MemoryState }).state.writes;
    expect(writes).toHaveLength(1);
  });

  it('refuses a read-only child with "Block node is read-only"', async () => {
    await chain(layer);
    await layer.openNode(undefined, { driver: 'memcow', 'node-name': 'ro', 'read-only': 'on', 'file.driver': 'memory', 'file.filename': 'top' });
    await expect(layer.openNode(undefined, { driver: 'copy-on-read', file: 'ro' })).rejects.toThrow('Block node is read-only');
  });

  it('bottom limits copying to data above the bottom node', async () => {
    memoryDisks.set('base', new Uint8Array(2 * CLUSTER).fill(0x11));
    memoryDisks.set('mid', new Uint8Array(2 * CLUSTER).fill(0x22));
    memoryDisks.set('top', new Uint8Array(2 * CLUSTER));
    await layer.openNode(undefined, { driver: 'memory', filename: 'base', 'node-name': 'base' });
    const mid = await layer.openNode(undefined, { driver: 'memcow', 'node-name': 'mid', 'file.driver': 'memory', 'file.filename': 'mid', backing: 'base' });
    const writer = BlockBackend.attach(mid, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    await writer.write(CLUSTER, CLUSTER, new Uint8Array(CLUSTER).fill(0x22));
    writer.detach();
    const top = await layer.openNode(undefined, { driver: 'memcow', 'node-name': 'top', 'file.driver': 'memory', 'file.filename': 'top', backing: 'mid' });
    const cor = await layer.openNode(undefined, { driver: 'copy-on-read', file: 'top', bottom: 'mid' });
    const buf = new Uint8Array(2 * CLUSTER);
    await BlockBackend.attach(cor, PERM_CONSISTENT_READ, PERM_ALL).read(0, 2 * CLUSTER, buf);
    expect(buf[0]).toBe(0x11);
    expect(buf[CLUSTER]).toBe(0x22);
    expect(await isAllocated(top, 0, CLUSTER)).toEqual({ allocated: false, pnum: CLUSTER });
    expect(await isAllocated(top, CLUSTER, CLUSTER)).toEqual({ allocated: true, pnum: CLUSTER });
  });

  it('rejects a bottom node outside the backing chain instead of looping', async () => {
    await chain(layer);
    const fileNode = layer.findNode('top')!.file!.node.nodeName;
    await expect(layer.openNode(undefined, { driver: 'copy-on-read', file: 'top', bottom: fileNode }))
      .rejects.toThrow(/is not in the backing chain/);
  });
});

describe('permissions on edges', () => {
  it('refuses a write that only holds write unchanged', async () => {
    memoryDisks.clear();
    const layer = newLayer();
    const node = await layer.openNode(undefined, { driver: 'memory', filename: 'x' });
    const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ, PERM_ALL);
    await expect(blk.write(0, 1, new Uint8Array(1))).rejects.toThrow(/without 'write' permission/);
    await expect(blk.write(0, 1, new Uint8Array(1), REQ_WRITE_UNCHANGED)).rejects.toThrow(/write unchanged/);
  });

  it('reports permission conflicts with QEMU wording', async () => {
    memoryDisks.clear();
    const layer = newLayer();
    const node = await layer.openNode(undefined, { driver: 'memory', filename: 'x', 'node-name': 'disk' });
    BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_CONSISTENT_READ, 'first');
    expect(() => BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL, 'second')).toThrow(
      "Permission conflict on node 'disk': permissions 'write' are both required by block device 'second' " +
        "(uses node 'disk' as 'root' child) and unshared by block device 'first' (uses node 'disk' as 'root' child).",
    );
  });

  it('lets a filter without WRITE_UNCHANGED support fail the copy write cleanly', async () => {
    memoryDisks.clear();
    const layer = new BlockLayer([memoryDriver, memCowDriver, copyOnReadDriver, { ...rawDriver, name: 'plainfilter', supportedWriteFlags: () => 0, supportedZeroFlags: () => 0 }]);
    await chain(layer);
    await layer.openNode(undefined, { driver: 'plainfilter', 'node-name': 'f', file: 'top' });
    const cor = await layer.openNode(undefined, { driver: 'copy-on-read', file: 'f' });
    const blk = BlockBackend.attach(cor, PERM_CONSISTENT_READ, PERM_ALL);
    await expect(blk.read(0, 512, new Uint8Array(512))).rejects.toThrow(/without 'write' permission/);
  });
});

describe('alignment padding', () => {
  it('leaves the caller\'s bytes where the driver does not write (as QEMU pads around the buffer)', async () => {
    const { nullCoDriver } = await import('../../../src/drivers/null.js');
    const layer = new BlockLayer([nullCoDriver]);
    const node = await layer.openNode(undefined, { driver: 'null-co', size: '1M' });
    node.limits.requestAlignment = 512;
    const buf = new Uint8Array(16).fill(0xab);
    await BlockBackend.attach(node, PERM_CONSISTENT_READ, PERM_ALL).read(3, 16, buf);
    expect([...buf]).toEqual(new Array(16).fill(0xab));
  });
});

describe.skipIf(!haveQemu)('copy-on-read into qcow2, compared with QEMU 7.2', () => {
  const K = 1024;
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => tmp.remove());

  /** base (0x11 everywhere) <- top.qcow2 with `topOpts`, after `topWrites` (qemu-io commands). */
  function makeChain(topOpts: string, topWrites: string[]): string {
    const base = tmp.path('base.qcow2');
    const top = tmp.path('top.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', base, '1M');
    qemuIo(base, ['write -P 0x11 0 1M']);
    qemuImg('create', '-q', '-f', 'qcow2', '-o', topOpts, '-b', base, '-F', 'qcow2', top);
    if (topWrites.length) qemuIo(top, topWrites);
    return top;
  }

  async function readThroughFilter(top: string, offset: number, bytes: number): Promise<Uint8Array> {
    const layer = new BlockLayer(allDrivers);
    try {
      const cor = await layer.openNode(top, { driver: 'copy-on-read', 'file.driver': 'qcow2' });
      const blk = BlockBackend.attach(cor, PERM_CONSISTENT_READ, PERM_ALL);
      const buf = new Uint8Array(bytes);
      await blk.read(offset, bytes, buf);
      blk.detach();
      return buf;
    } finally {
      await layer.closeAll();
    }
  }

  /** Top-layer allocation as `qemu-io -c map` reports it. */
  function topMap(top: string): string {
    return qemuIo(top, ['map']);
  }

  it('copies every unallocated subcluster of the whole cluster, as 7.2 does', async () => {
    const ours = makeChain('extended_l2=on', ['write -P 0x22 8k 2k']);
    const ref = tmp.path('ref.qcow2');
    copyFileSync(ours, ref);
    execFileSync('qemu-io', ['-C', '-f', 'qcow2', '-c', 'read 4k 8k', ref]);
    const buf = await readThroughFilter(ours, 4 * K, 8 * K);
    expect(buf[0]).toBe(0x11);
    expect(buf[4 * K]).toBe(0x22);
    expect(readFileSync(ours).equals(readFileSync(ref))).toBe(true);
    expect(topMap(ours)).toMatch(/^64 KiB \(0x10000\) bytes {5}allocated at offset 0 bytes/);
  });

  it('copies only the touched subclusters where 7.2 fails an assertion (the cluster starts allocated)', async () => {
    const top = makeChain('extended_l2=on', ['write -P 0x22 0 1k']);
    await readThroughFilter(top, 3 * K, 4 * K);
    expect(topMap(top).split('\n')[0]).toBe('8 KiB (0x2000) bytes     allocated at offset 0 bytes (0x0)');
  });

  it('copies only the touched subclusters where 7.2 fails an assertion (any run starting after the request)', async () => {
    const top = makeChain('cluster_size=16k,extended_l2=on', ['write -P 0x22 8k 2k']);
    await readThroughFilter(top, 4 * K, 4 * K);
    expect(topMap(top).split('\n').slice(0, 2)).toEqual([
      '4 KiB (0x1000) bytes not allocated at offset 0 bytes (0x0)',
      '6 KiB (0x1800) bytes     allocated at offset 4 KiB (0x1000)',
    ]);
  });

  it('copies only the touched subclusters where 7.2 fails an assertion (allocated data after the request)', async () => {
    const top = makeChain('extended_l2=on', ['write -P 0x22 40k 2k']);
    await readThroughFilter(top, 2 * K, 4 * K);
    expect(topMap(top).split('\n').slice(0, 3)).toEqual([
      '2 KiB (0x800) bytes not allocated at offset 0 bytes (0x0)',
      '4 KiB (0x1000) bytes     allocated at offset 2 KiB (0x800)',
      '34 KiB (0x8800) bytes not allocated at offset 6 KiB (0x1800)',
    ]);
  });
});

describe('request limit on child edges', () => {
  it('fails reads and writes with a buffer beyond REQUEST_MAX_BYTES with EIO, past the end too; zero writes have no limit', async () => {
    const layer = new BlockLayer(allDrivers);
    const raw = await layer.openNode(undefined, { driver: 'raw', 'file.driver': 'null-co', 'file.size': 3 * 2 ** 30 });
    BlockBackend.attach(raw, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    const file = raw.file!;
    // The check comes before any use of the buffer, as a driver's table read relies on.
    const small = new Uint8Array(1);
    await expect(file.read(0, REQUEST_MAX_BYTES + 1, small)).rejects.toMatchObject({ code: 'EIO' });
    await expect(file.read(4 * 2 ** 30, REQUEST_MAX_BYTES + 1, small)).rejects.toMatchObject({ code: 'EIO' });
    await expect(file.write(0, REQUEST_MAX_BYTES + 1, small)).rejects.toMatchObject({ code: 'EIO' });
    await expect(file.writeCompressed(0, REQUEST_MAX_BYTES + 1, small)).rejects.toMatchObject({ code: 'EIO' });
    await expect(file.writeZeroes(0, REQUEST_MAX_BYTES + 1)).resolves.toBeUndefined();
  });
});
