import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { STATUS_ALLOCATED, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_ZERO } from '../../../../src/block/flags.js';
import { nodeBlockStatus } from '../../../../src/block/io.js';
import { haveQemu, openQcow2, qemuImg, qemuImgStatus, qemuIo, tempDir } from './helpers.js';

/** Read `bytes` at `offset` and check every byte is `value`. */
async function expectPattern(img: Awaited<ReturnType<typeof openQcow2>>, offset: number, bytes: number, value: number): Promise<void> {
  const buf = new Uint8Array(bytes);
  await img.blk.read(offset, bytes, buf);
  const bad = buf.findIndex((b) => b !== value);
  expect(bad === -1 ? 'ok' : `byte ${offset + bad} = ${buf[bad]}`).toBe('ok');
}

describe.skipIf(!haveQemu)('qcow2 reads images written by QEMU', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => tmp.remove());

  const layouts: Array<[string, string]> = [
    ['default', ''],
    ['512-byte clusters, 1-bit refcounts', 'cluster_size=512,refcount_bits=1'],
    ['2 MiB clusters, 64-bit refcounts', 'cluster_size=2M,refcount_bits=64'],
    ['extended L2', 'extended_l2=on,cluster_size=32k'],
    ['compat 0.10', 'compat=0.10'],
  ];

  for (const [name, opts] of layouts) {
    it(`data, zero and compressed clusters: ${name}`, async () => {
      const file = tmp.path('a.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), file, '8M');
      qemuIo(file, [
        'write -P 0x11 0 3M', 'write -P 0x22 5000 7000', 'write -z 1M 512k', 'write -c -P 0x33 4M 2M',
        'write -P 0x44 8388096 512',
      ]);
      const img = await openQcow2(file, false);
      try {
        await expectPattern(img, 0, 5000, 0x11);
        await expectPattern(img, 5000, 7000, 0x22);
        await expectPattern(img, 12000, 1024 * 1024 - 12000, 0x11);
        await expectPattern(img, 1024 * 1024, 512 * 1024, 0);
        await expectPattern(img, 1536 * 1024, 1536 * 1024, 0x11);
        await expectPattern(img, 3 * 2 ** 20, 2 ** 20, 0);
        await expectPattern(img, 4 * 2 ** 20, 2 * 2 ** 20, 0x33);
        await expectPattern(img, 8 * 2 ** 20 - 512, 512, 0x44);
      } finally {
        await img.close();
      }
    });
  }

  it('reads zstd-compressed clusters, and writes compressed clusters into zstd images that QEMU reads', async () => {
    const file = tmp.path('z.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd', file, '1M');
    qemuIo(file, ['write -c -P 0x41 0 64k', 'write -c -P 0x42 64k 64k', 'write -c 128k 128k']);
    const img = await openQcow2(file);
    try {
      await expectPattern(img, 0, 65536, 0x41);
      await expectPattern(img, 65536, 65536, 0x42);
      await expectPattern(img, 131072, 131072, 0xcd);
      await img.blk.writeCompressed(262144, 65536, new Uint8Array(65536).fill(0x44));
    } finally {
      await img.close();
    }
    expect(qemuImgStatus('check', file).status).toBe(0);
    qemuIo(file, ['read -P 0x44 256k 64k', 'read -P 0x41 0 64k']);
  });

  it('reads unallocated ranges from the backing file, zeroes past its end', async () => {
    const base = tmp.path('base.qcow2');
    const top = tmp.path('top.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', base, '1M');
    qemuIo(base, ['write -P 0x55 0 1M']);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top, '2M');
    qemuIo(top, ['write -P 0x66 100k 10k', 'write -z 300k 64k']);
    const img = await openQcow2(top, false);
    try {
      expect(img.node.backingFile).toBe(base);
      expect(img.node.backingFormat).toBe('qcow2');
      await expectPattern(img, 0, 100 * 1024, 0x55);
      await expectPattern(img, 100 * 1024, 10 * 1024, 0x66);
      await expectPattern(img, 110 * 1024, 190 * 1024, 0x55);
      await expectPattern(img, 300 * 1024, 64 * 1024, 0);
      await expectPattern(img, 2 ** 20, 2 ** 20, 0);
    } finally {
      await img.close();
    }
  });

  it('handles a final partial cluster and 4 GiB sparse images', async () => {
    const file = tmp.path('big.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', file, String(4 * 2 ** 30 + 1536));
    qemuIo(file, ['write -P 0x77 4G 1536', 'write -P 0x78 2G 4k']);
    const img = await openQcow2(file, false);
    try {
      expect(img.blk.getLength()).toBe(4 * 2 ** 30 + 1536);
      await expectPattern(img, 4 * 2 ** 30, 1536, 0x77);
      await expectPattern(img, 2 * 2 ** 30, 4096, 0x78);
      await expectPattern(img, 3 * 2 ** 30, 65536, 0);
    } finally {
      await img.close();
    }
  });

  it('reports block status like QEMU: data with host offsets, zero clusters, unallocated', async () => {
    const file = tmp.path('s.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', file, '1M');
    qemuIo(file, ['write -P 1 0 128k', 'write -z 128k 64k']);
    const map = JSON.parse(qemuImg('map', '--output=json', file)) as Array<{ start: number; offset?: number }>;
    const img = await openQcow2(file, false);
    try {
      const data = await nodeBlockStatus(img.node, 0, 2 ** 20);
      expect(data.status).toBe(STATUS_DATA | STATUS_OFFSET_VALID | STATUS_ALLOCATED);
      expect(data.pnum).toBe(128 * 1024);
      expect(data.map).toBe(map[0].offset);
      expect(data.file).toBe(img.node.file!.node);
      const zero = await nodeBlockStatus(img.node, 128 * 1024, 2 ** 20);
      expect(zero.status).toBe(STATUS_ZERO | STATUS_ALLOCATED);
      expect(zero.pnum).toBe(64 * 1024);
      const rest = await nodeBlockStatus(img.node, 192 * 1024, 2 ** 20);
      expect(rest.status & STATUS_ALLOCATED).toBe(0);
      expect(rest.pnum).toBe(2 ** 20 - 192 * 1024);
    } finally {
      await img.close();
    }
  });

  it('describes the image like qemu-img info', async () => {
    const file = tmp.path('i.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,lazy_refcounts=on,refcount_bits=8', file, '1M');
    const info = JSON.parse(qemuImg('info', '--output=json', file));
    const img = await openQcow2(file, false);
    try {
      const specific = (await img.node.driver.formatSpecific!(img.node))!;
      expect(specific.json).toEqual(info['format-specific'].data);
      expect(Object.keys(specific.json)).toEqual(Object.keys(info['format-specific'].data));
      expect(img.node.driver.getInfo!(img.node)).toMatchObject({ clusterSize: 65536, subclusterSize: 2048 });
    } finally {
      await img.close();
    }
  });
});
