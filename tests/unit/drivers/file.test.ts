/**
 * The `file` driver on real host files, once with the native addon (holes, fallocate) and once
 * with BLKIO_NO_NATIVE=1 (the pure-JS paths). Each run loads the modules afresh, so that the
 * addon's lazy loader sees the environment of its run.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ADDON_PATH } from '../../../src/drivers/file-native.js';

const K = 1024;
const M = 1024 * K;
// CI builds the addon (npm ci): there it must load; elsewhere a machine may lack a compiler.
const addonExpected = existsSync(join(__dirname, '../../..', ADDON_PATH)) || process.env.CI === 'true';

async function loadModules() {
  vi.resetModules();
  const graph = await import('../../../src/block/graph.js');
  const child = await import('../../../src/block/child.js');
  const driver = await import('../../../src/block/driver.js');
  const perms = await import('../../../src/block/permissions.js');
  const flags = await import('../../../src/block/flags.js');
  const io = await import('../../../src/block/io.js');
  const file = await import('../../../src/drivers/file.js');
  const native = await import('../../../src/drivers/file-native.js');
  return { graph, child, driver, perms, flags, io, file, native };
}

type Modules = Awaited<ReturnType<typeof loadModules>>;

describe.each([
  { mode: 'native', noNative: '' },
  { mode: 'pure-JS', noNative: '1' },
])('file driver ($mode)', ({ mode, noNative }) => {
  const native = mode === 'native';
  let m: Modules;
  let dir: string;
  let path: string;

  beforeAll(async () => {
    vi.stubEnv('BLKIO_NO_NATIVE', noNative);
    m = await loadModules();
  });
  afterAll(() => {
    vi.unstubAllEnvs();
  });
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'blkio-file-'));
    path = join(dir, 'img');
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** The file as a protocol node, behind an edge with every permission (it may grow the file). */
  async function openFile() {
    const layer = new m.graph.BlockLayer([m.file.fileDriver]);
    const node = await layer.openNode(undefined, { driver: 'file', filename: path, discard: 'unmap' });
    const edge = new m.child.BdrvChild({ describe: () => 'test' }, 'file', m.driver.ROLE_IMAGE, node);
    m.graph.attachChild(edge, m.perms.PERM_CONSISTENT_READ | m.perms.PERM_WRITE | m.perms.PERM_RESIZE, m.perms.PERM_ALL);
    return {
      node,
      edge,
      close: async () => {
        layer.releaseEdge(edge);
        await layer.closeNode(node);
      },
    };
  }

  /** [offset, length, zero] runs of block status over the whole node. */
  async function map(node: Parameters<typeof m.io.nodeBlockStatus>[0]) {
    const runs: Array<[number, number, boolean]> = [];
    for (let offset = 0; offset < node.getLength();) {
      const r = await m.io.nodeBlockStatus(node, offset, node.getLength() - offset);
      expect(r.map).toBe(offset);
      expect(r.status & m.flags.STATUS_OFFSET_VALID).toBeTruthy();
      runs.push([offset, r.pnum, (r.status & m.flags.STATUS_ZERO) !== 0]);
      offset += r.pnum;
    }
    return runs;
  }

  async function sparseFile() {
    await truncate(path, 0).catch(() => writeFile(path, ''));
    await truncate(path, 4 * M);
    const fh = await open(path, 'r+');
    await fh.write(new Uint8Array(M).fill(0x11), 0, M, M);
    await fh.close();
  }

  it(native ? 'uses the addon' : 'runs without the addon', () => {
    expect(m.native.nativeFileOps() !== undefined).toBe(native && addonExpected);
    const zeroFlags = m.file.fileDriver.supportedZeroFlags!(undefined as never);
    // No FUA, as in QEMU 7.2: the generic layer emulates it with a flush.
    const { REQ_MAY_UNMAP, REQ_NO_FALLBACK } = m.flags;
    expect(zeroFlags).toBe(native && addonExpected ? REQ_MAY_UNMAP | REQ_NO_FALLBACK : REQ_NO_FALLBACK);
  });

  it('block status: holes read as zero with the addon, all data without', async () => {
    await sparseFile();
    const f = await openFile();
    try {
      expect(await map(f.node)).toEqual(
        native && m.native.nativeFileOps()
          ? [[0, M, true], [M, M, false], [2 * M, 2 * M, true]]
          : [[0, 4 * M, false]],
      );
    } finally {
      await f.close();
    }
  });

  it('zero writes, with and without unmapping, and past the end', async () => {
    await writeFile(path, new Uint8Array(M).fill(0x22));
    const f = await openFile();
    try {
      await f.edge.writeZeroes(0, 64 * K, m.flags.REQ_MAY_UNMAP);
      await f.edge.writeZeroes(128 * K, 64 * K, 0);
      await f.edge.writeZeroes(M - 64 * K, 128 * K, m.flags.REQ_MAY_UNMAP | m.flags.REQ_FUA);
      expect(f.node.getLength()).toBe(M + 64 * K);
      const runs = await map(f.node);
      if (m.native.nativeFileOps()) {
        // The hole and the zeroed (unwritten) range both read as zero in the map.
        expect(runs[0]).toEqual([0, 64 * K, true]);
        expect(runs.at(-1)![2]).toBe(true);
      }
    } finally {
      await f.close();
    }
    const data = await readFile(path);
    expect(data.length).toBe(M + 64 * K);
    expect(data.subarray(0, 64 * K).every((b) => b === 0)).toBe(true);
    expect(data.subarray(64 * K, 128 * K).every((b) => b === 0x22)).toBe(true);
    expect(data.subarray(128 * K, 192 * K).every((b) => b === 0)).toBe(true);
    expect(data.subarray(192 * K, M - 64 * K).every((b) => b === 0x22)).toBe(true);
    expect(data.subarray(M - 64 * K).every((b) => b === 0)).toBe(true);
  });

  it('discard leaves zeroes (a hole with the addon) and keeps the size', async () => {
    await writeFile(path, new Uint8Array(M).fill(0x33));
    const f = await openFile();
    try {
      await f.edge.discard(256 * K, 256 * K);
      await f.edge.discard(M - 4 * K, 4 * K);
      if (m.native.nativeFileOps()) {
        expect(await map(f.node)).toEqual([[0, 256 * K, false], [256 * K, 256 * K, true], [512 * K, 508 * K, false], [M - 4 * K, 4 * K, true]]);
      }
    } finally {
      await f.close();
    }
    const data = await readFile(path);
    expect(data.length).toBe(M);
    expect(data.subarray(256 * K, 512 * K).every((b) => b === 0)).toBe(true);
    expect(data.subarray(512 * K, M - 4 * K).every((b) => b === 0x33)).toBe(true);
    expect(data.subarray(M - 4 * K).every((b) => b === 0)).toBe(true);
  });

  it('growing an empty file writes its first block, as QEMU', async () => {
    await writeFile(path, '');
    let f = await openFile();
    await f.edge.truncate(2 * M, true, 'off');
    expect(f.node.getLength()).toBe(2 * M);
    if (m.native.nativeFileOps()) expect(await map(f.node)).toEqual([[0, 4 * K, false], [4 * K, 2 * M - 4 * K, true]]);
    await f.close();
    // A tiny size gets one sector, which can make the file longer than asked.
    await writeFile(path, '');
    f = await openFile();
    await f.edge.truncate(100, true, 'off');
    expect(f.node.getLength()).toBe(512);
    await f.close();
    expect((await stat(path)).size).toBe(512);
  });

  it('preallocation: falloc allocates (with the addon), full writes zeroes, both keep old data', async () => {
    await writeFile(path, new Uint8Array(64 * K).fill(0x44));
    const f = await openFile();
    try {
      await f.edge.truncate(M, true, 'falloc');
      expect(f.node.getLength()).toBe(M);
      const blocks = (await stat(path)).blocks * 512;
      if (m.native.nativeFileOps()) expect(blocks).toBeGreaterThanOrEqual(M);
      await f.edge.truncate(2 * M, true, 'full');
      expect(f.node.getLength()).toBe(2 * M);
      expect((await stat(path)).blocks * 512).toBeGreaterThanOrEqual(blocks + M);
      if (m.native.nativeFileOps()) expect((await map(f.node)).at(-1)).toEqual([M, M, false]);
    } finally {
      await f.close();
    }
    const data = await readFile(path);
    expect(data.subarray(0, 64 * K).every((b) => b === 0x44)).toBe(true);
    expect(data.subarray(64 * K).every((b) => b === 0)).toBe(true);
  });

  it("refuses preallocation when shrinking, and modes it doesn't have, with QEMU's texts", async () => {
    await writeFile(path, new Uint8Array(64 * K));
    const f = await openFile();
    try {
      await expect(f.edge.truncate(4 * K, true, 'full')).rejects.toMatchObject({
        code: 'ENOTSUP', message: 'Cannot use preallocation for shrinking files',
      });
      await expect(f.edge.truncate(4 * K, true, 'metadata')).rejects.toMatchObject({
        message: 'Cannot use preallocation for shrinking files',
      });
      await expect(f.edge.truncate(M, true, 'metadata')).rejects.toMatchObject({
        code: 'ENOTSUP', message: 'Unsupported preallocation mode: metadata',
      });
      expect(f.node.getLength()).toBe(64 * K);
      await f.edge.truncate(4 * K, true, 'off');
      expect(f.node.getLength()).toBe(4 * K);
    } finally {
      await f.close();
    }
  });

  it('sizes a new file as ftruncate and fallocate do, without the generic truncate checks', async () => {
    await writeFile(path, '');
    const f = await openFile();
    const create = (size: number, preallocation?: string) =>
      f.edge.create({ filename: path, size, options: preallocation ? { preallocation } : {} });
    try {
      // From 2^63 up a size is negative to the kernel: a shrink to preallocation, else EINVAL.
      await expect(create(2 ** 63, 'falloc')).rejects.toMatchObject({ code: 'ENOTSUP', message: 'Cannot use preallocation for shrinking files' });
      await expect(create(2 ** 63)).rejects.toMatchObject({ code: 'EINVAL', message: 'Could not resize file: Invalid argument' });
      // Beyond what Node takes: too large, in the words of the step that failed.
      await expect(create(2 ** 62, 'falloc')).rejects.toMatchObject({ code: 'EFBIG', message: 'Could not preallocate new data: File too large' });
      await expect(create(2 ** 53, 'full')).rejects.toMatchObject({ code: 'EFBIG', message: 'Could not resize file: File too large' });
      await expect(f.edge.truncate(2 ** 53, true, 'full')).rejects.toMatchObject({ code: 'EFBIG', message: 'Could not resize file: File too large' });
      await create(M, 'falloc');
      expect(f.node.getLength()).toBe(M);
    } finally {
      await f.close();
    }
  });
});

describe('host_device', () => {
  it('refuses what is not a device, and claims /dev/cdrom names before looking', async () => {
    const { BlockLayer } = await import('../../../src/block/graph.js');
    const { fileDriver, hostDeviceDriver } = await import('../../../src/drivers/file.js');
    const layer = new BlockLayer([fileDriver, hostDeviceDriver]);
    const openError = (options: Record<string, string>) => layer.openNode(undefined, options).then(() => 'opened', (e: Error) => e.message);
    expect(await openError({ driver: 'host_device', filename: tmpdir(), 'read-only': 'on' }))
      .toBe(`'host_device' driver requires '${tmpdir()}' to be either a character or block device`);
    expect(await openError({ driver: 'host_device' })).toBe("The 'host_device' block driver requires a file name");
    expect(hostDeviceDriver.probeDevice!('/dev/cdrom-none')).toBe(50);
    expect(hostDeviceDriver.probeDevice!(tmpdir())).toBe(0);
  });
});

describe('host_cdrom', () => {
  it('opens devices and has no medium: the backend refuses requests, the length and flushes', async () => {
    const { BlockLayer } = await import('../../../src/block/graph.js');
    const { BlockBackend } = await import('../../../src/block/backend.js');
    const { fileDriver, hostCdromDriver, hostDeviceDriver } = await import('../../../src/drivers/file.js');
    const { rawDriver } = await import('../../../src/drivers/raw.js');
    const layer = new BlockLayer([fileDriver, hostDeviceDriver, hostCdromDriver, rawDriver]);
    const node = await layer.openNode(undefined, { driver: 'raw', 'file.driver': 'host_cdrom', 'file.filename': '/dev/null', 'read-only': 'on' });
    const blk = BlockBackend.attach(node, 0);
    expect(() => blk.getLength()).toThrow('No medium found');
    await expect(blk.read(0, 512, new Uint8Array(512))).rejects.toThrow('No medium found');
    await expect(blk.flush()).rejects.toThrow('No medium found');
    await expect(blk.truncate(0, true)).rejects.toThrow('No medium inserted');
    expect(hostCdromDriver.probeDevice!('/dev/cdrom')).toBe(50);
    expect(hostCdromDriver.probeDevice!('/dev/sda')).toBe(0);
    blk.detach();
    await layer.closeAll();
  });
});
