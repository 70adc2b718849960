import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BlockNode } from '../../../src/block/node.js';
import { nodeBlockStatus, nodeBlockStatusListNow, nodeBlockStatusNow } from '../../../src/block/io.js';
import { StatusList } from '../../../src/block/driver.js';
import type { Qcow2State } from '../../../src/drivers/qcow2/index.js';
import { haveQemu, openQcow2, qemuImg, qemuIo, tempDir } from '../drivers/qcow2/helpers.js';

import type { BdrvChild } from '../../../src/block/child.js';
import { ROLE_IMAGE, type BlockDriver } from '../../../src/block/driver.js';
import {
  STATUS_ALLOCATED, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_RECURSE,
} from '../../../src/block/flags.js';
import { BlockLayer } from '../../../src/block/graph.js';

const MiB = 2 ** 20;

/** Every extent of the node as nodeBlockStatus gives it (which also loads the metadata). */
async function asyncExtents(node: BlockNode): Promise<Array<{ offset: number; status: number; pnum: number; map?: number }>> {
  const out = [];
  for (let offset = 0; offset < node.getLength();) {
    const r = await nodeBlockStatus(node, offset, node.getLength() - offset);
    out.push({ offset, status: r.status, pnum: r.pnum, map: r.map });
    offset += r.pnum;
  }
  return out;
}

describe.skipIf(!haveQemu)('nodeBlockStatusNow (block status from cached metadata)', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => tmp.remove());

  const layouts: Array<[string, string]> = [
    ['default', ''],
    ['512-byte clusters', 'cluster_size=512'],
    ['extended L2', 'extended_l2=on,cluster_size=32k'],
  ];
  for (const [name, opts] of layouts) {
    it(`answers as nodeBlockStatus does once the L2 slices are cached: ${name}`, async () => {
      const file = tmp.path('a.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), file, '8M');
      qemuIo(file, ['write -P 1 0 3M', 'write -P 2 3100k 4k', 'write -z 1M 512k', 'write -c -P 3 4M 1M', 'discard 512k 64k']);
      const img = await openQcow2(file, false);
      try {
        expect(nodeBlockStatusNow(img.node, 0, 8 * MiB)).toBeUndefined();
        const expected = await asyncExtents(img.node);
        expect(expected.length).toBeGreaterThan(4);
        // Otherwise data extents would rightly wait for the file's answer (see the last test).
        expect((img.node.state as Qcow2State).metadataPreallocation).toBe(false);
        for (const e of expected) {
          const now = nodeBlockStatusNow(img.node, e.offset, img.node.getLength() - e.offset);
          expect({ offset: e.offset, status: now?.status, pnum: now?.pnum, map: now?.map }).toEqual(e);
        }
      } finally {
        await img.close();
      }
    });
  }

  it('leaves the answer to nodeBlockStatus while the qcow2 lock is held', async () => {
    const file = tmp.path('a.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', file, '1M');
    qemuIo(file, ['write -P 1 0 64k']);
    const img = await openQcow2(file, false);
    try {
      await nodeBlockStatus(img.node, 0, MiB);
      expect(nodeBlockStatusNow(img.node, 0, MiB)).toBeDefined();
      const s = img.node.state as Qcow2State;
      await s.lock.run(async () => expect(nodeBlockStatusNow(img.node, 0, MiB)).toBeUndefined());
    } finally {
      await img.close();
    }
  });

  it('leaves preallocated metadata to nodeBlockStatus, which asks the file for holes', async () => {
    const file = tmp.path('a.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', file, '1M');
    const img = await openQcow2(file, false);
    try {
      const r = await nodeBlockStatus(img.node, 0, MiB);
      expect(nodeBlockStatusNow(img.node, 0, MiB)).toBeUndefined();
      expect(r.pnum).toBe(MiB);
    } finally {
      await img.close();
    }
  });

  for (const [name, opts] of layouts) {
    it(`lists the answers nodeBlockStatus gives one after another: ${name}`, async () => {
      const file = tmp.path('a.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), file, '8M');
      qemuIo(file, ['write -P 1 0 3M', 'write -P 2 3100k 4k', 'write -z 1M 512k', 'write -c -P 3 4M 1M', 'discard 512k 64k']);
      const img = await openQcow2(file, false, { 'l2-cache-entry-size': '512' });
      try {
        const list = new StatusList(4);
        nodeBlockStatusListNow(img.node, 0, 8 * MiB, list);
        expect(list.count).toBe(0);
        const expected = await asyncExtents(img.node);
        const listed = [];
        let calls = 0;
        for (let offset = 0; offset < img.node.getLength(); calls++) {
          nodeBlockStatusListNow(img.node, offset, img.node.getLength() - offset, list);
          expect(list.count).toBeGreaterThan(0);
          for (let i = 0; i < list.count; i++) {
            const hasMap = (list.status[i] & STATUS_OFFSET_VALID) !== 0;
            listed.push({ offset, status: list.status[i], pnum: list.pnum[i], map: hasMap ? list.map[i] : undefined });
            if (hasMap) expect(list.file).toBe(img.node.children[0].node);
            offset += list.pnum[i];
          }
        }
        expect(listed).toEqual(expected);
        // Small L2 slices and a short list: an answer list ends at either.
        expect(calls).toBeGreaterThan(1);
        expect(calls).toBeLessThan(expected.length);
      } finally {
        await img.close();
      }
    });
  }

  it('ends a list before an answer that asks the node below, which nodeBlockStatusNow then gives', async () => {
    const K = 1024;
    // A host answering 4 KiB at a time; a format over it whose every other 4 KiB asks the host about holes.
    const host: BlockDriver<null> = {
      name: 'host', kind: 'protocol', options: {}, open: async () => null, getLength: () => 64 * K,
      blockStatusNow: (node, offset, bytes) => ({ status: STATUS_DATA | STATUS_OFFSET_VALID, pnum: Math.min(bytes, 4 * K), map: offset, file: node }),
    };
    const answer = (offset: number) => STATUS_DATA | STATUS_OFFSET_VALID | (offset % (8 * K) ? STATUS_RECURSE : 0);
    const format: BlockDriver<BdrvChild> = {
      name: 'format', kind: 'format', options: {}, open: async (_node, ctx) => (await ctx.openChild('file', ROLE_IMAGE))!,
      getLength: () => 64 * K,
      blockStatusNow: (node, offset) => ({ status: answer(offset), pnum: 4 * K, map: offset, file: node.state.node }),
      blockStatusListNow(node, offset, bytes, list) {
        for (let at = offset; at < offset + bytes && list.push(answer(at), 4 * K, at, node.state.node); at += 4 * K);
      },
    };
    const layer = new BlockLayer([host, format]);
    try {
      const node = await layer.openNode(undefined, { driver: 'format', 'file.driver': 'host' });
      const list = new StatusList(8);
      const DATA = STATUS_DATA | STATUS_OFFSET_VALID | STATUS_ALLOCATED;
      nodeBlockStatusListNow(node, 0, 64 * K, list);
      expect([list.count, list.status[0], list.pnum[0]]).toEqual([1, DATA, 4 * K]);
      nodeBlockStatusListNow(node, 4 * K, 60 * K, list);
      const now = nodeBlockStatusNow(node, 4 * K, 60 * K)!;
      expect([list.count, list.status[0], list.pnum[0], list.map[0]]).toEqual([1, now.status, now.pnum, now.map]);
      nodeBlockStatusListNow(node.children[0].node, 0, 64 * K, list);
      expect([list.count, list.status[0], list.pnum[0]]).toEqual([1, DATA, 4 * K]);
    } finally {
      await layer.closeAll();
    }
  });
});
