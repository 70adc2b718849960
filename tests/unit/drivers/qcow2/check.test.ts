import { copyFileSync, openSync, readFileSync, writeSync, closeSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { CheckResult } from '../../../../src/block/driver.js';
import { haveQemu, openQcow2, qemuImg, qemuImgStatus, tempDir } from './helpers.js';

/** Overwrite bytes of a file in place. */
function poke(file: string, offset: number, bytes: number[]): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.from(bytes), 0, bytes.length, offset);
  closeSync(fd);
}

async function blkioCheck(file: string, repair?: 'leaks' | 'all'): Promise<{ result: CheckResult; lines: string[] }> {
  const img = await openQcow2(file, repair !== undefined);
  const lines: string[] = [];
  try {
    const result = await img.node.driver.check!(img.node, repair, (l) => lines.push(l));
    return { result, lines };
  } finally {
    await img.close();
  }
}

/** QEMU's JSON check result as our CheckResult fields. */
function qemuCheck(file: string, repair?: string): { json?: Record<string, number>; lines: string[] } {
  const r = qemuImgStatus('check', '--output=json', ...(repair ? ['-r', repair] : []), file);
  return { json: r.stdout ? JSON.parse(r.stdout) : undefined, lines: r.stderr.split('\n').filter(Boolean) };
}

describe.skipIf(!haveQemu)('qcow2 check', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => tmp.remove());

  /**
   * Check (and repair) two copies of a damaged image, with QEMU and with blkio: same findings,
   * same repairs, same repaired file; after a repair, the re-check qemu-img does must agree too.
   */
  async function compareWithQemu(damaged: string, repair?: 'leaks' | 'all'): Promise<void> {
    const ours = tmp.path('ours.qcow2');
    const ref = tmp.path('ref.qcow2');
    copyFileSync(damaged, ours);
    copyFileSync(damaged, ref);
    const q = qemuCheck(ref, repair);
    if (!q.json) {
      // QEMU gave up (a leak-only repair that would need a rebuild).
      await expect(blkioCheck(ours, repair)).rejects.toThrow();
      return;
    }
    let { result, lines } = await blkioCheck(ours, repair);
    if (repair) {
      expect(result.leaksFixed).toBe(q.json['leaks-fixed'] ?? 0);
      expect(result.corruptionsFixed).toBe(q.json['corruptions-fixed'] ?? 0);
      expect(readFileSync(ours).equals(readFileSync(ref))).toBe(true);
      ({ result } = await blkioCheck(ours));
    } else {
      expect(lines).toEqual(q.lines);
    }
    expect(result.corruptions).toBe(q.json.corruptions ?? 0);
    expect(result.leaks).toBe(q.json.leaks ?? 0);
    expect(result.imageEndOffset).toBe(q.json['image-end-offset']);
    expect(result.allocatedClusters).toBe(q.json['allocated-clusters'] ?? 0);
    expect(result.fragmentedClusters).toBe(q.json['fragmented-clusters'] ?? 0);
    expect(result.compressedClusters).toBe(q.json['compressed-clusters'] ?? 0);
    expect(result.totalClusters).toBe(q.json['total-clusters']);
  }

  function baseImage(opts = ''): string {
    const file = tmp.path('img.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), file, '64M');
    spawnSync('qemu-io', ['-c', 'write -P 1 0 1M', '-c', 'write 10M 64k', '-c', 'write -c 20M 64k', '-c', 'write 30M 64k', file]);
    return file;
  }

  it('finds nothing wrong in a clean image and computes the statistics', async () => {
    await compareWithQemu(baseImage());
  });

  for (const repair of [undefined, 'leaks', 'all'] as const) {
    it(`leaked clusters (${repair ?? 'report only'})`, async () => {
      const file = baseImage();
      poke(file, 0x20000 + 12, [0, 2]);
      poke(file, 0x20000 + 200, [0, 1]);
      await compareWithQemu(file, repair);
    });

    it(`a referenced cluster without refcount (${repair ?? 'report only'})`, async () => {
      const file = baseImage('refcount_bits=8');
      poke(file, 0x20000 + 7, [0]);
      await compareWithQemu(file, repair);
    });

    it(`refcounts lost by a crash with lazy refcounts (${repair ?? 'report only'})`, async () => {
      const file = tmp.path('lazy.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', file, '64M');
      spawnSync('qemu-io', ['-c', 'write -P 1 0 1M', '-c', 'write 10M 64k', '-c', 'sigraise 9', file]);
      await compareWithQemu(file, repair);
    });
  }

  it('repairs a dirty image before the first request, like QEMU at open', async () => {
    const file = tmp.path('lazy.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', file, '64M');
    spawnSync('qemu-io', ['-c', 'write -P 1 0 1M', '-c', 'sigraise 9', file]);
    const ref = tmp.path('ref.qcow2');
    copyFileSync(file, ref);
    spawnSync('qemu-io', ['-c', 'read 0 512', ref]);
    const img = await openQcow2(file);
    try {
      await img.blk.read(0, 512, new Uint8Array(512));
    } finally {
      await img.close();
    }
    expect(readFileSync(file).equals(readFileSync(ref))).toBe(true);
  });
});
