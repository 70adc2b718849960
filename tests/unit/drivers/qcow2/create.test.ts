import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createSettings } from '../../../../src/drivers/qcow2/create.js';
import { createQcow2, haveQemu, qemuImg, tempDir } from './helpers.js';

/** `-o` text into the typed values `qemu-img create` hands the driver. */
function typed(opts: string): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const item of opts ? opts.split(',') : []) {
    const [k, v] = item.split('=');
    if (k === 'cluster_size') out[k] = parseInt(v, 10) * ({ k: 1024, M: 2 ** 20 }[v.slice(-1)] ?? 1);
    else if (k === 'refcount_bits') out[k] = Number(v);
    else if (['extended_l2', 'lazy_refcounts', 'data_file_raw', 'encryption'].includes(k)) out[k] = v === 'on';
    else out[k] = v;
  }
  return out;
}

describe('qcow2 create option validation', () => {
  const cases: Array<[string, string]> = [
    ['cluster_size=1000', 'Cluster size must be a power of two between 512 and 2048k'],
    ['cluster_size=4096,extended_l2=on', 'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes'],
    ['compat=0.10,extended_l2=on', 'Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)'],
    ['compat=0.10,lazy_refcounts=on', 'Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)'],
    ['refcount_bits=3', 'Refcount width must be a power of two and may not exceed 64 bits'],
    ['compat=0.10,refcount_bits=8', 'Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)'],
    ['preallocation=metadata,backing_file=b', 'Backing file and preallocation can only be used at the same time if extended_l2 is on'],
    ['backing_fmt=raw', 'Backing format cannot be used without backing file'],
    ['data_file_raw=on', 'data-file-raw requires data-file'],
    ['compat=0.10,compression_type=zstd', 'Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)'],
    ['compression_type=foo', "Parameter 'compression-type' does not accept value 'foo'"],
    ['compat=1.5', "Parameter 'version' does not accept value '1.5'"],
    ['preallocation=foo', "Parameter 'preallocation' does not accept value 'foo'"],
    // The backing format is checked against QEMU's driver names even when nothing opens it (-u).
    ['backing_file=b,backing_fmt=foo,preallocation=foo', "Parameter 'backing-fmt' does not accept value 'foo'"],
  ];
  for (const [opts, message] of cases) {
    it(opts, () => {
      expect(() => createSettings(typed(opts))).toThrow(message);
    });
  }
});

describe.skipIf(!haveQemu)('qcow2 create writes what qemu-img create 7.2 writes', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => tmp.remove());

  const combos: Array<[string, number]> = [
    ['', 2 ** 30],
    ['compat=0.10', 2 ** 30],
    ['cluster_size=512', 2 ** 30],
    ['cluster_size=2M,refcount_bits=64', 2 ** 30],
    ['extended_l2=on,lazy_refcounts=on', 2 ** 30],
    ['refcount_bits=1', 4 * 2 ** 30],
    ['compression_type=zstd', 2 ** 20],
    ['preallocation=metadata', 100 * 2 ** 20 + 512],
    ['preallocation=metadata,cluster_size=512,refcount_bits=2', 8 * 2 ** 20],
    ['preallocation=falloc,cluster_size=1k', 8 * 2 ** 20],
    ['preallocation=full', 3 * 2 ** 20],
    ['preallocation=full,extended_l2=on', 3 * 2 ** 20],
    ['preallocation=falloc,extended_l2=on,cluster_size=16k', 100 * 1024],
    ['preallocation=metadata,extended_l2=on', 1024],
    ['', 1024],
    ['', 0],
  ];
  for (const [opts, size] of combos) {
    it(`${opts || 'defaults'}, ${size} bytes`, async () => {
      const ours = tmp.path('ours.qcow2');
      const ref = tmp.path('ref.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), ref, String(size));
      await createQcow2(ours, size, typed(opts));
      expect(readFileSync(ours).equals(readFileSync(ref))).toBe(true);
    });
  }

  it('records the backing file and its format', async () => {
    const ours = tmp.path('ours.qcow2');
    const ref = tmp.path('ref.qcow2');
    const base = tmp.path('base.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', base, '1M');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', ref, '1M');
    await createQcow2(ours, 2 ** 20, { backing_file: base, backing_fmt: 'qcow2' });
    expect(readFileSync(ours).equals(readFileSync(ref))).toBe(true);
  });
});
