import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { REQ_MAY_UNMAP } from '../../../../src/block/flags.js';
import {
  createQcow2, expectClean, haveQemu, openQcow2, pattern, qemuImg, qemuImgStatus, qemuIo, tempDir,
} from './helpers.js';

/** One guest operation, applied both through blkio and as a qemu-io command. */
type Op =
  | { kind: 'write'; offset: number; bytes: number; value: number }
  | { kind: 'zero'; offset: number; bytes: number; unmap: boolean }
  | { kind: 'discard'; offset: number; bytes: number }
  | { kind: 'compress'; offset: number; bytes: number; value: number };

function qemuCommand(op: Op): string {
  switch (op.kind) {
    case 'write': return `write -P ${op.value} ${op.offset} ${op.bytes}`;
    case 'zero': return `write -z${op.unmap ? ' -u' : ''} ${op.offset} ${op.bytes}`;
    case 'discard': return `discard ${op.offset} ${op.bytes}`;
    case 'compress': return `write -c -P ${op.value} ${op.offset} ${op.bytes}`;
  }
}

async function applyBlkio(file: string, ops: Op[]): Promise<void> {
  const img = await openQcow2(file);
  try {
    for (const op of ops) {
      switch (op.kind) {
        case 'write': await img.blk.write(op.offset, op.bytes, pattern(op.bytes, op.value)); break;
        case 'zero': await img.blk.writeZeroes(op.offset, op.bytes, op.unmap ? REQ_MAY_UNMAP : 0); break;
        case 'discard': await img.blk.discard(op.offset, op.bytes); break;
        case 'compress': await img.blk.writeCompressed(op.offset, op.bytes, pattern(op.bytes, op.value)); break;
      }
    }
    await img.blk.flush();
  } finally {
    await img.close();
  }
}

/** Apply `ops` to a raw file as the expected guest view. */
function applyModel(raw: Uint8Array, ops: Op[]): void {
  for (const op of ops) {
    if (op.kind === 'write' || op.kind === 'compress') raw.fill(op.value, op.offset, op.offset + op.bytes);
    else raw.fill(0, op.offset, op.offset + op.bytes);
  }
}

const K = 1024;
const M = 1024 * K;

describe.skipIf(!haveQemu)('qcow2 writes', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => tmp.remove());

  /** Same operations through QEMU and blkio from the same starting image: the files must be identical. */
  async function expectSameAsQemu(createOpts: string, size: number, ops: Op[], backing?: string): Promise<void> {
    const ref = tmp.path('ref.qcow2');
    const ours = tmp.path('ours.qcow2');
    const args = ['create', '-q', '-f', 'qcow2'];
    if (createOpts) args.push('-o', createOpts);
    if (backing) args.push('-b', backing, '-F', 'qcow2');
    qemuImg(...args, ref, String(size));
    copyFileSync(ref, ours);
    qemuIo(ref, ops.map(qemuCommand));
    await applyBlkio(ours, ops);
    expectClean(ours);
    expect(readFileSync(ours).equals(readFileSync(ref))).toBe(true);
  }

  const mixed: Op[] = [
    { kind: 'write', offset: 0, bytes: 4 * K, value: 1 },
    { kind: 'write', offset: 100 * K, bytes: 200 * K, value: 2 },
    { kind: 'zero', offset: M, bytes: 64 * K, unmap: false },
    { kind: 'zero', offset: 2 * M, bytes: 100 * K, unmap: false },
    { kind: 'zero', offset: 100 * K, bytes: 64 * K, unmap: true },
    { kind: 'discard', offset: 0, bytes: 64 * K },
    { kind: 'write', offset: 3 * M + 5, bytes: 3 * M, value: 3 },
    { kind: 'discard', offset: 4 * M, bytes: M },
    { kind: 'write', offset: 4 * M + 512, bytes: 512, value: 4 },
    { kind: 'write', offset: 16 * M - 512, bytes: 512, value: 5 },
  ];

  // Every refcount width that whole bytes hold is set a run at a time (8 and 32 bits here).
  for (const opts of [
    '', 'compat=0.10', 'extended_l2=on', 'cluster_size=512,refcount_bits=1', 'cluster_size=4k,refcount_bits=8', 'refcount_bits=32',
    'cluster_size=4k,refcount_bits=64', 'cluster_size=2M', 'lazy_refcounts=on',
  ]) {
    it(`allocates like QEMU 7.2 [${opts || 'defaults'}]`, async () => {
      await expectSameAsQemu(opts, 16 * M, mixed);
    });
  }

  it('copies the untouched parts of new clusters from the backing file, like QEMU', async () => {
    for (const opts of ['', 'extended_l2=on']) {
      const base = tmp.path('base.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', base, '4M');
      qemuIo(base, ['write -P 0x11 0 4M', 'write -z 64k 64k']);
      await expectSameAsQemu(opts, 4 * M, [
        { kind: 'write', offset: K, bytes: 2 * K, value: 1 },
        { kind: 'write', offset: 70 * K, bytes: K, value: 2 },
        { kind: 'zero', offset: 200 * K, bytes: 4 * K, unmap: false },
        { kind: 'discard', offset: 512 * K, bytes: 64 * K },
        { kind: 'write', offset: 600 * K, bytes: 1, value: 3 },
      ], base);
    }
  });

  it('copies COW regions past the image end from a longer backing file, like QEMU 7.2', async () => {
    // QEMU's zero check of COW regions (is_zero_fast) has no answer past the end: it copies them.
    const base = tmp.path('base.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', base, '1M');
    qemuIo(base, ['write -P 0x11 0 1M']);
    await expectSameAsQemu('', 100000, [{ kind: 'write', offset: 64 * K, bytes: 34816, value: 5 }], base);
  });

  it('matches a raw model (qemu-img compare) for blkio-created images', async () => {
    const size = 3 * M + 1536;
    const file = tmp.path('c.qcow2');
    const raw = tmp.path('model.raw');
    await createQcow2(file, size, { cluster_size: 16384, refcount_bits: 4 });
    const ops: Op[] = [
      { kind: 'write', offset: 10, bytes: 70000, value: 9 },
      { kind: 'compress', offset: 10 * 16384, bytes: 16384, value: 7 },
      { kind: 'zero', offset: 5000, bytes: 3000, unmap: true },
      { kind: 'compress', offset: 3 * M, bytes: 1536, value: 6 },
      { kind: 'write', offset: size - 1000, bytes: 1000, value: 8 },
      { kind: 'discard', offset: M, bytes: 64 * K },
    ];
    await applyBlkio(file, ops);
    const model = new Uint8Array(size);
    applyModel(model, ops);
    writeFileSync(raw, model);
    expectClean(file);
    const r = qemuImgStatus('compare', '-f', 'qcow2', '-F', 'raw', file, raw);
    expect(r.stdout).toBe('Images are identical.\n');
  });

  it('does not pack compressed data into a freed compressed cluster that new data took over', async () => {
    // QEMU 7.2 corrupts this image (iotest 159): the data cluster gets a second owner.
    const file = tmp.path('reuse.qcow2');
    const raw = tmp.path('model.raw');
    await createQcow2(file, M, { cluster_size: 4096 });
    const ops: Op[] = [
      { kind: 'compress', offset: 0, bytes: 4 * K, value: 1 },
      { kind: 'discard', offset: 0, bytes: 4 * K },
      { kind: 'write', offset: 4 * K, bytes: 4 * K, value: 2 },
      { kind: 'compress', offset: 8 * K, bytes: 4 * K, value: 3 },
    ];
    await applyBlkio(file, ops);
    const model = new Uint8Array(M);
    applyModel(model, ops);
    writeFileSync(raw, model);
    expectClean(file);
    expect(qemuImgStatus('compare', '-f', 'qcow2', '-F', 'raw', file, raw).stdout).toBe('Images are identical.\n');
  });

  it('grows a 4 GiB sparse image across L2 tables and the refcount table', async () => {
    const file = tmp.path('g.qcow2');
    await createQcow2(file, 4 * 2 ** 30, { cluster_size: 512 });
    await applyBlkio(file, [
      { kind: 'write', offset: 0, bytes: 300 * K, value: 1 },
      { kind: 'write', offset: 3 * 2 ** 30, bytes: 64 * K, value: 2 },
      { kind: 'write', offset: 4 * 2 ** 30 - 512, bytes: 512, value: 3 },
    ]);
    expectClean(file);
    const img = await openQcow2(file, false);
    try {
      const buf = new Uint8Array(512);
      await img.blk.read(4 * 2 ** 30 - 512, 512, buf);
      expect(buf.every((b) => b === 3)).toBe(true);
    } finally {
      await img.close();
    }
  });

  it('rejects compressed writes over allocated clusters and unaligned ones', async () => {
    const file = tmp.path('x.qcow2');
    await createQcow2(file, M);
    const img = await openQcow2(file);
    try {
      await img.blk.write(0, 64 * K, pattern(64 * K, 1));
      await expect(img.blk.writeCompressed(0, 64 * K, pattern(64 * K, 2))).rejects.toThrow('Input/output error');
      await expect(img.blk.writeCompressed(512, 64 * K, pattern(64 * K, 2))).rejects.toThrow('Invalid argument');
    } finally {
      await img.close();
    }
  });

  it('resizes: grow with metadata preallocation, shrink', async () => {
    const file = tmp.path('r.qcow2');
    const ref = tmp.path('rref.qcow2');
    await createQcow2(file, M);
    qemuImg('create', '-q', '-f', 'qcow2', ref, '1M');
    for (const [f, run] of [[file, true], [ref, false]] as const) {
      if (run) {
        const img = await openQcow2(f);
        try {
          await img.blk.write(0, M, pattern(M, 5));
          await img.blk.truncate(3 * M, false, 'metadata');
          await img.blk.truncate(512 * K, false);
        } finally {
          await img.close();
        }
      } else {
        qemuIo(f, ['write -P 5 0 1M']);
        qemuImg('resize', '-q', '-f', 'qcow2', '--preallocation=metadata', f, '3M');
        qemuImg('resize', '-q', '-f', 'qcow2', '--shrink', f, '512K');
      }
    }
    expectClean(file);
    expect(readFileSync(file).equals(readFileSync(ref))).toBe(true);
  });

  for (const [mode, extendedL2] of [['metadata', 'off'], ['metadata', 'on'], ['falloc', 'on'], ['full', 'on']]) {
    it(`grows with ${mode} preallocation, extended_l2=${extendedL2}: the last cluster copied, its subcluster bitmap kept`, async () => {
      const base = tmp.path('base.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', base, '100K');
      qemuIo(base, ['write -P 2 0 100K']);
      const images = [tmp.path('ours.qcow2'), tmp.path('ref.qcow2')];
      for (const f of images) {
        qemuImg('create', '-q', '-f', 'qcow2', '-o', `extended_l2=${extendedL2}`, '-b', base, '-F', 'qcow2', f, '100K');
        // The last cluster (64K..100K) partly written with subclusters; without them left unallocated.
        qemuIo(f, [`write -P 3 ${extendedL2 === 'on' ? 70 : 4}K 10K`]);
      }
      const img = await openQcow2(images[0]);
      try {
        await img.blk.truncate(M, false, mode);
      } finally {
        await img.close();
      }
      qemuImg('resize', '-q', '-f', 'qcow2', `--preallocation=${mode}`, images[1], '1M');
      expectClean(images[0]);
      expect(readFileSync(images[0]).equals(readFileSync(images[1]))).toBe(true);
    });
  }

  for (const [mode, extendedL2] of [['off', 'off'], ['off', 'on'], ['metadata', 'on'], ['falloc', 'on'], ['full', 'off']]) {
    it(`grows over a longer backing file with ${mode} preallocation, extended_l2=${extendedL2}: the new area reads zeroes`, async () => {
      const base = tmp.path('base.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', base, '1M');
      qemuIo(base, ['write -P 2 0 1M']);
      const images = [tmp.path('ours.qcow2'), tmp.path('ref.qcow2')];
      for (const f of images) qemuImg('create', '-q', '-f', 'qcow2', '-o', `extended_l2=${extendedL2}`, '-b', base, '-F', 'qcow2', f, '99K');
      const img = await openQcow2(images[0]);
      try {
        await img.blk.truncate(M, false, mode);
        const grown = new Uint8Array(M - 99 * K);
        await img.blk.read(99 * K, grown.length, grown);
        expect(grown.every((b) => b === 0)).toBe(true);
      } finally {
        await img.close();
      }
      qemuImg('resize', '-q', '-f', 'qcow2', `--preallocation=${mode}`, images[1], '1M');
      expectClean(images[0]);
      expect(readFileSync(images[0]).equals(readFileSync(images[1]))).toBe(true);
    });
  }
});
