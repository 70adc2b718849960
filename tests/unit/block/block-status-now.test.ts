import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { BlockNode } from '../../../src/block/node.js';
import { nodeBlockStatus, nodeBlockStatusNow } from '../../../src/block/io.js';
import type { Qcow2State } from '../../../src/drivers/qcow2/index.js';
import { haveQemu, openQcow2, qemuImg, qemuIo, tempDir } from '../drivers/qcow2/helpers.js';

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
});
