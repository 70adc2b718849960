import { beforeEach, describe, expect, it } from 'vitest';
import { BlockLayer } from '../../../src/block/graph.js';
import { ROLE_IMAGE, type BlockDriver, type BlockStatusResult } from '../../../src/block/driver.js';
import type { BdrvChild } from '../../../src/block/child.js';
import type { BlockNode } from '../../../src/block/node.js';
import {
  STATUS_ALLOCATED, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_RECURSE, STATUS_ZERO,
} from '../../../src/block/flags.js';
import { nodeBlockStatus } from '../../../src/block/io.js';
import { BlkioError } from '../../../src/errors.js';
import { fileDriver } from '../../../src/drivers/file.js';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const K = 1024;

/** A host of 256 KiB whose extents the test sets: [start, end, zero]; fails when `broken`. */
let extents: Array<[number, number, boolean]>;
let broken = false;

const hostDriver: BlockDriver<null> = {
  name: 'host',
  kind: 'protocol',
  options: {},
  open: async () => null,
  getLength: () => 256 * K,
  async blockStatus(node, offset, bytes): Promise<BlockStatusResult> {
    if (broken) throw new BlkioError('EIO');
    const [, end, zero] = extents.find(([s, e]) => s <= offset && offset < e)!;
    const status = (zero ? STATUS_ZERO : STATUS_DATA) | STATUS_OFFSET_VALID;
    return { status, pnum: Math.min(bytes, end - offset), map: offset, file: node };
  },
};

/** A 512 KiB format mapping everything 1:1 as data on its file, with `flags` added. */
let flags = STATUS_RECURSE;
const formatDriver: BlockDriver<BdrvChild> = {
  name: 'prealloc',
  kind: 'format',
  options: {},
  open: async (_node, ctx) => (await ctx.openChild('file', ROLE_IMAGE))!,
  getLength: () => 512 * K,
  async blockStatus(node, offset, bytes) {
    return { status: STATUS_DATA | STATUS_OFFSET_VALID | flags, pnum: bytes, map: offset, file: node.state.node };
  },
};

describe('block status: a format asks its file about holes (STATUS_RECURSE)', () => {
  let node: BlockNode;
  beforeEach(async () => {
    extents = [[0, 64 * K, false], [64 * K, 192 * K, true], [192 * K, 256 * K, false]];
    broken = false;
    flags = STATUS_RECURSE;
    const layer = new BlockLayer([hostDriver, formatDriver]);
    node = await layer.openNode(undefined, { driver: 'prealloc', 'file.driver': 'host' });
  });

  const DATA = STATUS_DATA | STATUS_OFFSET_VALID | STATUS_ALLOCATED;

  it('stays data over written host space, up to the next hole', async () => {
    expect(await nodeBlockStatus(node, 0, 128 * K)).toMatchObject({ status: DATA, pnum: 64 * K, map: 0 });
  });

  it('adds ZERO over a host hole, as long as the hole lasts', async () => {
    expect(await nodeBlockStatus(node, 64 * K, 512 * K - 64 * K)).toMatchObject({ status: DATA | STATUS_ZERO, pnum: 128 * K });
  });

  it('reads past the end of the host, or a hole up to it, as zeroes for the whole range', async () => {
    expect(await nodeBlockStatus(node, 300 * K, 100 * K)).toMatchObject({ status: DATA | STATUS_ZERO, pnum: 100 * K });
    extents[2][2] = true;
    expect(await nodeBlockStatus(node, 192 * K, 200 * K)).toMatchObject({ status: DATA | STATUS_ZERO, pnum: 200 * K });
  });

  it('ignores host errors, and asks nothing without the flag', async () => {
    broken = true;
    expect(await nodeBlockStatus(node, 64 * K, 64 * K)).toMatchObject({ status: DATA, pnum: 64 * K });
    broken = false;
    flags = 0;
    expect(await nodeBlockStatus(node, 64 * K, 64 * K)).toMatchObject({ status: DATA, pnum: 64 * K });
  });
});

describe('block status: a quick question (wantZero false, QEMU want_zero=false)', () => {
  it('does not ask the file about holes', async () => {
    extents = [[0, 256 * K, true]];
    broken = false;
    flags = STATUS_RECURSE;
    const node = await new BlockLayer([hostDriver, formatDriver]).openNode(undefined, { driver: 'prealloc', 'file.driver': 'host' });
    expect(await nodeBlockStatus(node, 0, 64 * K, false)).toMatchObject({ status: STATUS_DATA | STATUS_OFFSET_VALID | STATUS_ALLOCATED, pnum: 64 * K });
    expect((await nodeBlockStatus(node, 0, 64 * K)).status & STATUS_ZERO).toBe(STATUS_ZERO);
  });

  it('takes a hole of a host file as data', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'blkio-status-'));
    try {
      const filename = join(dir, 'sparse');
      writeFileSync(filename, '');
      truncateSync(filename, 64 * K);
      const layer = new BlockLayer([fileDriver]);
      const node = await layer.openNode(undefined, { driver: 'file', filename });
      expect(await nodeBlockStatus(node, 0, 64 * K, false)).toMatchObject({ status: STATUS_DATA | STATUS_OFFSET_VALID | STATUS_ALLOCATED, pnum: 64 * K });
      await layer.closeAll();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
