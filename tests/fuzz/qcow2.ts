/**
 * Differential fuzzer for the qcow2 driver. Each seed picks an image layout (cluster size,
 * refcount width, extended L2, compat, lazy refcounts, backing file, odd sizes) and a random
 * sequence of writes, zero writes, discards, compressed writes, flushes and reads. The
 * sequence runs through blkio and against a raw model; reads must match the model as they
 * happen, and afterwards real `qemu-img check` must find no errors or leaks, `qemu-img
 * compare` must find the image identical to the model, and the same sequence run through
 * real qemu-io must produce a byte-identical file.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockBackend } from '../../src/block/backend.js';
import { BlockLayer } from '../../src/block/graph.js';
import { REQ_MAY_UNMAP } from '../../src/block/flags.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../src/block/permissions.js';
import { allDrivers } from '../../src/drivers/index.js';

/** mulberry32: small, fast, reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Op =
  | { kind: 'write'; offset: number; bytes: number; value: number }
  | { kind: 'zero'; offset: number; bytes: number; unmap: boolean }
  | { kind: 'discard'; offset: number; bytes: number }
  | { kind: 'compress'; offset: number; bytes: number; value: number }
  | { kind: 'read'; offset: number; bytes: number }
  | { kind: 'flush' };

interface Layout {
  clusterSize: number;
  refcountBits: number;
  extendedL2: boolean;
  compat: '0.10' | '1.1';
  lazyRefcounts: boolean;
  size: number;
  backing: boolean;
}

export interface SeedResult {
  seed: number;
  ok: boolean;
  description: string;
  message?: string;
}

function pick<T>(rnd: () => number, items: readonly T[]): T {
  return items[Math.floor(rnd() * items.length)];
}

function chooseLayout(rnd: () => number): Layout {
  const compat = rnd() < 0.2 ? '0.10' : '1.1';
  const clusterSize = pick(rnd, [512, 1024, 4096, 16384, 65536, 65536, 2 * 1024 * 1024]);
  const extendedL2 = compat === '1.1' && clusterSize >= 16384 && rnd() < 0.35;
  const refcountBits = compat === '1.1' ? pick(rnd, [1, 2, 4, 8, 16, 16, 32, 64]) : 16;
  const lazyRefcounts = compat === '1.1' && rnd() < 0.2;
  const units = Math.max(1, Math.floor(rnd() * 64));
  const size = units * clusterSize * pick(rnd, [1, 2, 8]) + (rnd() < 0.3 ? 512 * Math.floor(rnd() * 8) : 0);
  return { clusterSize, refcountBits, extendedL2, compat, lazyRefcounts, size: Math.min(size, 64 * 1024 * 1024), backing: rnd() < 0.35 };
}

function createOptions(l: Layout): string {
  return [
    `cluster_size=${l.clusterSize}`, `refcount_bits=${l.refcountBits}`, `compat=${l.compat}`,
    `extended_l2=${l.extendedL2 ? 'on' : 'off'}`, `lazy_refcounts=${l.lazyRefcounts ? 'on' : 'off'}`,
  ].join(',');
}

function randomRange(rnd: () => number, l: Layout): { offset: number; bytes: number } {
  const aligned = rnd() < 0.5;
  const unit = aligned ? l.clusterSize : 1;
  const slots = Math.max(1, Math.floor(l.size / unit));
  const offset = Math.min(Math.floor(rnd() * slots) * unit, l.size - 1);
  const maxBytes = Math.min(l.size - offset, l.clusterSize * pick(rnd, [1, 2, 4, 16]));
  let bytes = Math.max(1, Math.floor(rnd() * maxBytes));
  if (aligned) bytes = Math.min(l.size - offset, Math.max(unit, Math.round(bytes / unit) * unit));
  return { offset, bytes };
}

function chooseOps(rnd: () => number, l: Layout, count: number): Op[] {
  const ops: Op[] = [];
  const touched = new Set<number>();
  const touch = (offset: number, bytes: number): void => {
    for (let c = Math.floor(offset / l.clusterSize); c * l.clusterSize < offset + bytes; c++) touched.add(c);
  };
  for (let i = 0; i < count; i++) {
    const r = rnd();
    const { offset, bytes } = randomRange(rnd, l);
    if (r < 0.4) {
      ops.push({ kind: 'write', offset, bytes, value: 1 + Math.floor(rnd() * 254) });
      touch(offset, bytes);
    } else if (r < 0.55) {
      ops.push({ kind: 'zero', offset, bytes, unmap: rnd() < 0.5 });
      touch(offset, bytes);
    } else if (r < 0.65) {
      ops.push({ kind: 'discard', offset, bytes });
      touch(offset, bytes);
    } else if (r < 0.75) {
      // Compressed writes go to whole clusters nothing has touched yet.
      const cluster = Math.floor(rnd() * Math.ceil(l.size / l.clusterSize));
      if (touched.has(cluster) || (l.backing && l.compat === '0.10')) continue;
      const start = cluster * l.clusterSize;
      ops.push({ kind: 'compress', offset: start, bytes: Math.min(l.clusterSize, l.size - start), value: 1 + Math.floor(rnd() * 254) });
      touch(start, 1);
    } else if (r < 0.95) {
      ops.push({ kind: 'read', offset, bytes });
    } else {
      ops.push({ kind: 'flush' });
    }
  }
  return ops;
}

function qemuCommand(op: Op): string | undefined {
  switch (op.kind) {
    case 'write': return `write -P ${op.value} ${op.offset} ${op.bytes}`;
    case 'zero': return `write -z${op.unmap ? ' -u' : ''} ${op.offset} ${op.bytes}`;
    case 'discard': return `discard ${op.offset} ${op.bytes}`;
    case 'compress': return `write -c -P ${op.value} ${op.offset} ${op.bytes}`;
    case 'flush': return 'flush';
    default: return undefined;
  }
}

function describeOp(op: Op): string {
  return qemuCommand(op) ?? (op.kind === 'read' ? `read ${op.offset} ${op.bytes}` : op.kind);
}

/** The guest view QEMU promises after each operation. */
function applyToModel(model: Uint8Array, op: Op, l: Layout): void {
  switch (op.kind) {
    case 'write': case 'compress':
      model.fill(op.value, op.offset, op.offset + op.bytes);
      break;
    case 'zero':
      model.fill(0, op.offset, op.offset + op.bytes);
      break;
    case 'discard': {
      // Only whole clusters (or the partial one at the end) are discarded; v2 with a backing
      // file cannot discard at all; everything discarded reads as zeroes.
      if (l.compat === '0.10' && l.backing) break;
      const start = Math.ceil(op.offset / l.clusterSize) * l.clusterSize;
      const end = op.offset + op.bytes === l.size ? l.size : Math.floor((op.offset + op.bytes) / l.clusterSize) * l.clusterSize;
      if (end > start) model.fill(0, start, end);
      break;
    }
    default:
  }
}

/** What QEMU reads at ops[index] after running the ops before it on a copy of `initial`. */
function sameAsQemuRead(initial: string, dir: string, ops: Op[], index: number, ours: Uint8Array): boolean {
  const op = ops[index];
  if (op.kind !== 'read') return false;
  const copy = join(dir, 'replay.qcow2');
  copyFileSync(initial, copy);
  const args = ['-f', 'qcow2'];
  for (const prior of ops.slice(0, index)) {
    const c = qemuCommand(prior);
    if (c) args.push('-c', c);
  }
  args.push('-c', `read -v ${op.offset} ${op.bytes}`);
  const out = run('qemu-io', [...args, copy]).out;
  const bytes: number[] = [];
  for (const line of out.split('\n')) {
    // `XXXXXXXX:  XX XX ...` (single spaces), two spaces, then the ASCII column.
    if (!/^[0-9a-f]{8}:  /.test(line)) continue;
    for (const h of line.slice(11).split('  ')[0].split(' ')) bytes.push(parseInt(h, 16));
  }
  return bytes.length === ours.length && bytes.every((b, i) => b === ours[i]);
}

/**
 * Whether QEMU's image fails `qemu-img check` after some prefix of the operations (a later
 * write can hide the damage again, e.g. by dropping the second owner of a shared cluster).
 */
function qemuCorruptedOnTheWay(initial: string, dir: string, ops: Op[]): boolean {
  const copy = join(dir, 'prefix.qcow2');
  for (let n = 1; n <= ops.length; n++) {
    if (ops[n - 1].kind === 'read') continue;
    copyFileSync(initial, copy);
    const args = ['-f', 'qcow2'];
    for (const op of ops.slice(0, n)) args.push('-c', describeOp(op));
    run('qemu-io', [...args, copy]);
    if (run('qemu-img', ['check', copy]).status !== 0) return true;
  }
  return false;
}

/** One operation through blkio; reads are checked against the model. */
async function applyOp(
  blk: BlockBackend, op: Op, model: Uint8Array, index: number, problems: string[],
  mismatches: Array<{ index: number; data: Uint8Array }>,
): Promise<void> {
  switch (op.kind) {
    case 'write': await blk.write(op.offset, op.bytes, new Uint8Array(op.bytes).fill(op.value)); break;
    case 'zero': await blk.writeZeroes(op.offset, op.bytes, op.unmap ? REQ_MAY_UNMAP : 0); break;
    case 'discard': await blk.discard(op.offset, op.bytes); break;
    case 'compress': await blk.writeCompressed(op.offset, op.bytes, new Uint8Array(op.bytes).fill(op.value)); break;
    case 'flush': await blk.flush(); break;
    case 'read': {
      const buf = new Uint8Array(op.bytes);
      await blk.read(op.offset, op.bytes, buf);
      const expected = model.subarray(op.offset, op.offset + op.bytes);
      const bad = buf.findIndex((b, j) => b !== expected[j]);
      if (bad >= 0) {
        mismatches.push({ index, data: buf });
        problems.push(`op ${index} (${describeOp(op)}): byte ${op.offset + bad} reads ${buf[bad]}, model has ${expected[bad]}`);
      }
    }
  }
}

function run(cmd: string, args: string[]): { status: number; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return { status: r.status ?? -1, out: (r.stdout ?? '') + (r.stderr ?? '') };
}

export async function runSeed(seed: number, opCount = 40): Promise<SeedResult> {
  const rnd = prng(seed);
  const l = chooseLayout(rnd);
  const ops = chooseOps(rnd, l, opCount);
  const description = `${createOptions(l)} size=${l.size}${l.backing ? ' +backing' : ''}, ${ops.length} ops`;
  const dir = mkdtempSync(join(tmpdir(), 'blkio-fuzz-'));
  const file = join(dir, 'img.qcow2');
  const ref = join(dir, 'ref.qcow2');
  const rawModel = join(dir, 'model.raw');
  const base = join(dir, 'base.qcow2');
  const fail = (message: string): SeedResult => ({
    seed, ok: false, description, message: `${message}\n  ops:\n${ops.map((o) => `    ${describeOp(o)}`).join('\n')}`,
  });
  try {
    const model = new Uint8Array(l.size);
    const createArgs = ['create', '-q', '-f', 'qcow2', '-o', createOptions(l)];
    if (l.backing) {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(l.size)]);
      const value = 0x40 + Math.floor(rnd() * 64);
      const half = Math.floor(l.size / 2 / 512) * 512;
      run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${value} 0 ${half}`, base]);
      model.fill(value, 0, half);
      createArgs.push('-b', base, '-F', 'qcow2');
    }
    const created = run('qemu-img', [...createArgs, file, String(l.size)]);
    if (created.status !== 0) return fail(`qemu-img create failed: ${created.out}`);
    copyFileSync(file, ref);

    const problems: string[] = [];
    const failures: number[] = [];
    const mismatches: Array<{ index: number; data: Uint8Array }> = [];
    const initial = join(dir, 'initial.qcow2');
    copyFileSync(file, initial);
    const layer = new BlockLayer(allDrivers);
    try {
      const node = await layer.openNode(file, { driver: 'qcow2', discard: 'unmap' });
      const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
      for (const [i, op] of ops.entries()) {
        try {
          await applyOp(blk, op, model, i, problems, mismatches);
        } catch (e) {
          failures.push(i);
          problems.push(`op ${i} (${describeOp(op)}) failed: ${e instanceof Error ? e.message : String(e)}`);
        }
        applyToModel(model, op, l);
      }
      blk.detach();
    } finally {
      await layer.closeAll();
    }

    // The same operations through real qemu-io (reads too, so that failures compare): the files
    // must be identical. (Compressed clusters are constant-filled, which Node's zlib deflates
    // exactly like the system zlib.)
    const args = ['-f', 'qcow2'];
    for (const op of ops) args.push('-c', describeOp(op));
    const io = run('qemu-io', [...args, ref]);
    const qemuFailures = io.out.split('\n').filter((line) => / failed: /.test(line)).length;
    const same = readFileSync(ref).equals(readFileSync(file));

    writeFileSync(rawModel, model);
    const verdict = (image: string): string[] => {
      const found: string[] = [];
      const check = run('qemu-img', ['check', image]);
      if (check.status !== 0) found.push(`qemu-img check exit ${check.status}:\n${check.out.replaceAll(image, 'IMAGE')}`);
      const compare = run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', rawModel, image]);
      if (compare.status !== 0) found.push(`qemu-img compare: ${compare.out.replaceAll(image, 'IMAGE')}`);
      return found;
    };
    const ours = [...problems, ...verdict(file)];
    // QEMU 7.2 has bugs of its own (it can hand a freed compressed host cluster to new data
    // while still packing compressed clusters into it). Where its run goes wrong, blkio's may
    // differ from it, as long as blkio's image is right.
    const qemuWentWrong = (): boolean => qemuFailures > 0 || verdict(ref).length > 0;
    if (ours.length === 0) {
      if (same) return { seed, ok: true, description };
      if (qemuWentWrong() || qemuCorruptedOnTheWay(initial, dir, ops)) return { seed, ok: true, description: `${description}; clean where QEMU 7.2 is not` };
      return fail('image differs from the one qemu-io wrote with the same operations');
    }
    if (failures.length !== qemuFailures) {
      return fail([`${failures.length} operations failed here, ${qemuFailures} in qemu-io:\n${io.out}`, ...ours].join('\n'));
    }
    if (!same) return fail(['image differs from the one qemu-io wrote with the same operations', ...ours].join('\n'));
    // The very same image as QEMU's, with QEMU's very same problem, is tolerated.
    const readsAgree = mismatches.every((m) => sameAsQemuRead(initial, dir, ops, m.index, m.data));
    if (!qemuWentWrong() || !readsAgree) return fail(ours.join('\n'));
    return { seed, ok: true, description: `${description}; reproduces QEMU 7.2's own inconsistency` };
  } catch (e) {
    return fail(`exception: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
