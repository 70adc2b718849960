/**
 * Differential fuzzer for the qcow2 driver. Each seed picks an image layout (cluster size,
 * refcount width, extended L2, compat, lazy refcounts, odd sizes), a backing chain of 0-3
 * layers (each with its own geometry and size, the bottom one sometimes raw, each built by
 * real qemu-io with its own random operations) and a random sequence of writes, zero writes,
 * discards, compressed writes, flushes and reads for the top image. The model is the guest
 * view of the composed chain. The sequence runs through blkio and against the model; reads
 * must match the model as they happen, and afterwards real `qemu-img check` must find no
 * errors or leaks, `qemu-img compare` must find the image identical to the model, and the
 * same sequence run through real qemu-io must produce a byte-identical file. The other way
 * round, the chain qemu-io wrote must read in blkio exactly as the model, map like `qemu-img
 * map`, and check like `qemu-img check` (every qcow2 layer of it).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockBackend } from '../../src/block/backend.js';
import { BlockLayer } from '../../src/block/graph.js';
import type { BlockNode } from '../../src/block/node.js';
import { REQ_MAY_UNMAP } from '../../src/block/flags.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../src/block/permissions.js';
import { allDrivers } from '../../src/drivers/index.js';
import { toImageCheck } from '../../src/commands/img/check.js';
import { mapEntryAt, type MapEntry } from '../../src/commands/img/map.js';
import { toQemuJson } from '../../src/commands/img/qjson.js';

/** mulberry32: small, fast, reproducible. */
export function prng(seed: number): () => number {
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

/** One image of the chain: the top one (always qcow2), or a backing layer below it. */
interface Layer {
  format: 'qcow2' | 'raw';
  /** For a raw layer, the alignment its random ranges favour. */
  clusterSize: number;
  refcountBits: number;
  extendedL2: boolean;
  compat: '0.10' | '1.1';
  lazyRefcounts: boolean;
  size: number;
  /** Whether a backing layer lies below. */
  backing: boolean;
}

/** A backing layer, the operations qemu-io builds it with, and its file. */
interface BackingLayer {
  layer: Layer;
  ops: Op[];
  file: string;
}

export interface SeedResult {
  seed: number;
  ok: boolean;
  description: string;
  message?: string;
}

export function pick<T>(rnd: () => number, items: readonly T[]): T {
  return items[Math.floor(rnd() * items.length)];
}

function chooseLayout(rnd: () => number): Layer {
  const compat = rnd() < 0.2 ? '0.10' : '1.1';
  const clusterSize = pick(rnd, [512, 1024, 4096, 16384, 65536, 65536, 2 * 1024 * 1024]);
  const extendedL2 = compat === '1.1' && clusterSize >= 16384 && rnd() < 0.35;
  const refcountBits = compat === '1.1' ? pick(rnd, [1, 2, 4, 8, 16, 16, 32, 64]) : 16;
  const lazyRefcounts = compat === '1.1' && rnd() < 0.2;
  const units = Math.max(1, Math.floor(rnd() * 64));
  const size = units * clusterSize * pick(rnd, [1, 2, 8]) + (rnd() < 0.3 ? 512 * Math.floor(rnd() * 8) : 0);
  return {
    format: 'qcow2', clusterSize, refcountBits, extendedL2, compat, lazyRefcounts, size: Math.min(size, MAX_SIZE),
    backing: rnd() < 0.5,
  };
}

const MAX_SIZE = 64 * 1024 * 1024;

/**
 * The backing chain below `top`, bottom first: 1-3 layers when the top has a backing file,
 * each with its own geometry and a size near the top's (reads past a shorter layer's end see
 * zeroes), the bottom one sometimes raw. Drawn from a stream of its own, so that the top
 * image and its operations do not depend on the chain.
 */
function chooseChain(rnd: () => number, top: Layer, dir: string): BackingLayer[] {
  if (!top.backing) return [];
  const depth = 1 + Math.floor(rnd() * 3);
  const chain: BackingLayer[] = [];
  for (let i = 0; i < depth; i++) {
    const geometry = chooseLayout(rnd);
    const size = Math.min(MAX_SIZE, Math.max(512, Math.ceil((top.size * pick(rnd, [1, 1, 1, 0.5, 1.5])) / 512) * 512));
    const raw = i === 0 && rnd() < 0.3;
    const layer: Layer = raw
      ? { ...geometry, format: 'raw', clusterSize: pick(rnd, [512, 4096, 65536]), size, backing: false }
      : { ...geometry, size, backing: i > 0 };
    const ops = chooseOps(rnd, layer, 4 + Math.floor(rnd() * 16), 4).filter((op) => op.kind !== 'read');
    chain.push({ layer, ops, file: join(dir, `layer${i}.${layer.format}`) });
  }
  return chain;
}

/** qemu-img create's options for a qcow2 layer (the flags that are off by default only when on). */
function createOptions(l: Layer): string {
  const options = [`cluster_size=${l.clusterSize}`, `refcount_bits=${l.refcountBits}`, `compat=${l.compat}`];
  if (l.extendedL2) options.push('extended_l2=on');
  if (l.lazyRefcounts) options.push('lazy_refcounts=on');
  return options.join(',');
}

function describeLayer(l: Layer): string {
  return l.format === 'raw' ? `raw size=${l.size}` : `${createOptions(l)} size=${l.size}`;
}

function randomRange(rnd: () => number, l: Layer): { offset: number; bytes: number } {
  const aligned = rnd() < 0.5;
  const unit = aligned ? l.clusterSize : 1;
  const slots = Math.max(1, Math.floor(l.size / unit));
  const offset = Math.min(Math.floor(rnd() * slots) * unit, l.size - 1);
  const maxBytes = Math.min(l.size - offset, l.clusterSize * pick(rnd, [1, 2, 4, 16]));
  let bytes = Math.max(1, Math.floor(rnd() * maxBytes));
  if (aligned) bytes = Math.min(l.size - offset, Math.max(unit, Math.round(bytes / unit) * unit));
  return { offset, bytes };
}

/**
 * `maxCompressedClusters` above 1 lets a compressed write span several clusters: QEMU packs
 * those in whatever order its threads finish, so only images nobody compares byte for byte
 * (backing layers) get them.
 */
function chooseOps(rnd: () => number, l: Layer, count: number, maxCompressedClusters = 1): Op[] {
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
      // Compressed writes (qcow2 only) go to whole clusters nothing has touched yet.
      const cluster = Math.floor(rnd() * Math.ceil(l.size / l.clusterSize));
      const clusters = maxCompressedClusters > 1 ? 1 + Math.floor(rnd() * maxCompressedClusters) : 1;
      const start = cluster * l.clusterSize;
      const span = Math.min(clusters * l.clusterSize, l.size - start);
      if (l.format === 'raw' || [...Array(clusters).keys()].some((k) => touched.has(cluster + k))) continue;
      ops.push({ kind: 'compress', offset: start, bytes: span, value: 1 + Math.floor(rnd() * 254) });
      touch(start, span);
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
function applyToModel(model: Uint8Array, op: Op, l: Layer): void {
  switch (op.kind) {
    case 'write': case 'compress':
      model.fill(op.value, op.offset, op.offset + op.bytes);
      break;
    case 'zero':
      model.fill(0, op.offset, op.offset + op.bytes);
      break;
    case 'discard': {
      // A raw file punches a hole of exactly the range.
      if (l.format === 'raw') {
        model.fill(0, op.offset, op.offset + op.bytes);
        break;
      }
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

function qemuIoArgs(format: string, ops: Op[]): string[] {
  return ['-f', format, ...ops.flatMap((op) => ['-c', describeOp(op)])];
}

function qemuFailureCount(output: string): number {
  return output.split('\n').filter((line) => / failed: /.test(line)).length;
}

/** What real `qemu-img check` finds wrong with a qcow2 image, if anything. */
function qemuCheckFinding(image: string): string | undefined {
  const check = run('qemu-img', ['check', image]);
  return check.status === 0 ? undefined : `qemu-img check exit ${check.status}:\n${check.out.replaceAll(image, 'IMAGE')}`;
}

/** How the guest view real QEMU reads from an image differs from a raw model file, if it does. */
function qemuCompareFinding(model: string, image: string, format: string): string | undefined {
  const compare = run('qemu-img', ['compare', '-f', 'raw', '-F', format, model, image]);
  return compare.status === 0 ? undefined : `qemu-img compare: ${compare.out.replaceAll(image, 'IMAGE')}`;
}

/** The guest view real QEMU reads from an image it went wrong writing; undefined if it cannot read it all. */
function qemuView(image: string, format: string, dir: string): Uint8Array | undefined {
  const raw = join(dir, 'qemu-view.raw');
  return run('qemu-img', ['convert', '-f', format, '-O', 'raw', image, raw]).status === 0 ? readFileSync(raw) : undefined;
}

/** `view` cut or zero-extended to `size`: what a layer of that size sees of a shorter or longer backing file. */
function resized(view: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  out.set(view.subarray(0, size));
  return out;
}

/**
 * Builds the backing chain with real qemu-img and qemu-io, bottom first, and returns the guest
 * view of its top layer. Each layer's view is checked against QEMU's reading of it; where QEMU
 * 7.2 corrupts a layer of its own, its reading of that layer is what the layers above build on.
 */
function buildChain(chain: BackingLayer[], dir: string): { view?: Uint8Array; notes: string[]; problems: string[] } {
  let view: Uint8Array = new Uint8Array(0);
  const notes: string[] = [];
  const problems: string[] = [];
  for (const [i, { layer, ops, file }] of chain.entries()) {
    const createArgs = ['create', '-q', '-f', layer.format];
    if (layer.format === 'qcow2') createArgs.push('-o', createOptions(layer));
    if (i > 0) createArgs.push('-b', chain[i - 1].file, '-F', chain[i - 1].layer.format);
    const created = run('qemu-img', [...createArgs, file, String(layer.size)]);
    if (created.status !== 0) return { view, notes, problems: [`backing layer ${i}: qemu-img create failed: ${created.out}`] };
    // (Without commands qemu-io would read them from stdin.)
    const io = ops.length > 0 ? run('qemu-io', [...qemuIoArgs(layer.format, ops), file]).out : '';
    if (qemuFailureCount(io) > 0) problems.push(`backing layer ${i}: qemu-io failed:\n${io}`);
    view = resized(view, layer.size);
    for (const op of ops) applyToModel(view, op, layer);
    const modelFile = join(dir, `layer${i}.model`);
    writeFileSync(modelFile, view);
    const mismatch = qemuCompareFinding(modelFile, file, layer.format);
    if (!mismatch) continue;
    if (layer.format === 'qcow2' && qemuCheckFinding(file)) {
      const qemuReads = qemuView(file, layer.format, dir);
      if (!qemuReads) return { notes: [`QEMU 7.2 corrupted backing layer ${i} beyond reading`], problems };
      notes.push(`QEMU 7.2 corrupted backing layer ${i}`);
      view = qemuReads;
    } else {
      problems.push(`backing layer ${i} reads differently in QEMU than in the model: ${mismatch}`);
    }
  }
  return { view, notes, problems };
}

const READ_BACK_CHUNK = 4 * 1024 * 1024;
const MAP_PROBE_LIMIT = 1 << 30;

/**
 * Where two maps of the same image first disagree. Extents are compared piece by piece, so
 * that the comparison does not depend on where neighbouring extents were merged.
 */
function firstMapDifference(qemu: MapEntry[], ours: MapEntry[]): string | undefined {
  let i = 0;
  let j = 0;
  let pos = 0;
  while (i < qemu.length && j < ours.length) {
    const a = qemu[i];
    const b = ours[j];
    const sameOffset = a.offset === undefined ? b.offset === undefined
      : b.offset !== undefined && a.offset - a.start === b.offset - b.start;
    if (a.depth !== b.depth || a.present !== b.present || a.zero !== b.zero || a.data !== b.data || !sameOffset) {
      return `at ${pos}: qemu-img has ${JSON.stringify(a)}, blkio ${JSON.stringify(b)}`;
    }
    pos = Math.min(a.start + a.length, b.start + b.length);
    if (a.start + a.length === pos) i++;
    if (b.start + b.length === pos) j++;
  }
  return i < qemu.length || j < ours.length ? `the maps end differently (qemu-img at ${qemu.at(-1)?.start}, blkio at ${pos})` : undefined;
}

/** Runs `body` on a qcow2 image QEMU wrote, opened read-only in blkio (in check mode for a check). */
async function inBlkio<T>(image: string, body: (node: BlockNode) => Promise<T>, forCheck = false): Promise<T> {
  const layer = new BlockLayer(allDrivers);
  layer.openForCheck = forCheck;
  try {
    return await body(await layer.openNode(image, { driver: 'qcow2', 'read-only': 'on' }));
  } finally {
    await layer.closeAll();
  }
}

/** The guest view of a chain QEMU wrote must read through blkio exactly as `expected`. */
function readProblems(image: string, expected: Uint8Array): Promise<string[]> {
  return inBlkio(image, async (node) => {
    const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ, PERM_ALL);
    const buf = new Uint8Array(Math.min(READ_BACK_CHUNK, expected.length));
    try {
      for (let offset = 0; offset < expected.length; offset += buf.length) {
        const piece = buf.subarray(0, Math.min(buf.length, expected.length - offset));
        await blk.read(offset, piece.length, piece);
        const bad = piece.findIndex((b, k) => b !== expected[offset + k]);
        if (bad >= 0) return [`blkio reads byte ${offset + bad} of QEMU's image as ${piece[bad]}, QEMU as ${expected[offset + bad]}`];
      }
      return [];
    } finally {
      blk.detach();
    }
  });
}

/** The map of a qcow2 image QEMU wrote (through its whole chain) must be `qemu-img map`'s. */
function mapProblems(image: string): Promise<string[]> {
  return inBlkio(image, async (node) => {
    const ours: MapEntry[] = [];
    for (let offset = 0; offset < node.getLength();) {
      const e = await mapEntryAt(node, offset, Math.min(MAP_PROBE_LIMIT, node.getLength() - offset));
      ours.push(e);
      offset += e.length;
    }
    const qemu = JSON.parse(run('qemu-img', ['map', '--output=json', '-f', 'qcow2', image]).out) as MapEntry[];
    const difference = firstMapDifference(qemu, ours);
    return difference ? [`map of ${image}: ${difference}`] : [];
  });
}

/** blkio's `img check --output=json` of a qcow2 image QEMU wrote must be qemu-img's, where qemu-img finds it clean. */
async function checkProblems(image: string): Promise<string[]> {
  const qemu = run('qemu-img', ['check', '--output=json', image]);
  if (qemu.status !== 0) return [];
  return inBlkio(image, async (node) => {
    const reports: string[] = [];
    const result = await node.driver.check!(node, undefined, (line) => reports.push(line));
    const ours = toQemuJson(toImageCheck(image, 'qcow2', result));
    if (reports.length === 0 && ours === qemu.out.trimEnd()) return [];
    return [`check of ${image}:\n  qemu-img: ${qemu.out.trimEnd()}\n  blkio: ${[...reports, ours].join('\n')}`];
  }, true);
}

/** The files and operations of a seed, for a message that lets the run be replayed by hand. */
function describeRun(ops: Op[], chain: BackingLayer[]): string {
  const opsText = (list: Op[]): string => list.map((o) => `    ${describeOp(o)}`).join('\n');
  const layers = chain.map((b, i) => `  backing layer ${i} (${describeLayer(b.layer)}) ops:\n${opsText(b.ops)}`);
  return [...layers, `  ops:\n${opsText(ops)}`].join('\n');
}

/** Seeds the backing chain's own random stream (see chooseChain). */
const CHAIN_STREAM = 0x5eed5eed;

export async function runSeed(seed: number, opCount = 40): Promise<SeedResult> {
  const rnd = prng(seed);
  const l = chooseLayout(rnd);
  const ops = chooseOps(rnd, l, opCount);
  const dir = mkdtempSync(join(tmpdir(), 'blkio-fuzz-'));
  const chain = chooseChain(prng(seed ^ CHAIN_STREAM), l, dir);
  let description = [`${describeLayer(l)}, ${ops.length} ops`, ...chain.map((b) => `${describeLayer(b.layer)}, ${b.ops.length} ops`).reverse()]
    .join(' on ');
  const file = join(dir, 'img.qcow2');
  const ref = join(dir, 'ref.qcow2');
  const rawModel = join(dir, 'model.raw');
  let readBack: string[] = [];
  const fail = (message: string): SeedResult => ({
    seed, ok: false, description, message: `${[message, ...readBack].join('\n')}\n${describeRun(ops, chain)}`,
  });
  const pass = (note?: string): SeedResult => {
    if (readBack.length > 0) return fail('the image qemu-io wrote reads differently in blkio');
    return { seed, ok: true, description: note ? `${description}; ${note}` : description };
  };
  try {
    const built = buildChain(chain, dir);
    if (built.problems.length > 0) return fail(built.problems.join('\n'));
    if (built.notes.length > 0) description += `; ${built.notes.join(', ')}`;
    if (!built.view) return pass();
    const model = resized(built.view, l.size);
    const createArgs = ['create', '-q', '-f', 'qcow2', '-o', createOptions(l)];
    const top = chain.at(-1);
    if (top) createArgs.push('-b', top.file, '-F', top.layer.format);
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
    const io = run('qemu-io', [...qemuIoArgs('qcow2', ops), ref]);
    const qemuFailures = qemuFailureCount(io.out);
    const same = readFileSync(ref).equals(readFileSync(file));

    writeFileSync(rawModel, model);
    const verdict = (image: string): string[] =>
      [qemuCheckFinding(image), qemuCompareFinding(rawModel, image, 'qcow2')].filter((f): f is string => f !== undefined);
    const ours = [...problems, ...verdict(file)];
    // QEMU 7.2 has bugs of its own (it can hand a freed compressed host cluster to new data
    // while still packing compressed clusters into it). Where its run goes wrong, blkio's may
    // differ from it, as long as blkio's image is right.
    const qemuWentWrong = qemuFailures > 0 || verdict(ref).length > 0;

    // The other way round: the chain QEMU wrote reads, maps and checks the same in blkio.
    // Where QEMU wrote its image wrong, blkio must read it as QEMU does, if QEMU can read it at all.
    const qemuReads = qemuWentWrong ? qemuView(ref, 'qcow2', dir) : model;
    if (qemuReads) readBack = await readProblems(ref, qemuReads);
    for (const image of [...chain.filter((b) => b.layer.format === 'qcow2').map((b) => b.file), ref]) {
      readBack.push(...await mapProblems(image), ...await checkProblems(image));
    }

    if (ours.length === 0) {
      if (same) return pass();
      if (qemuWentWrong || qemuCorruptedOnTheWay(initial, dir, ops)) return pass('clean where QEMU 7.2 is not');
      return fail('image differs from the one qemu-io wrote with the same operations');
    }
    if (failures.length !== qemuFailures) {
      return fail([`${failures.length} operations failed here, ${qemuFailures} in qemu-io:\n${io.out}`, ...ours].join('\n'));
    }
    if (!same) return fail(['image differs from the one qemu-io wrote with the same operations', ...ours].join('\n'));
    // The very same image as QEMU's, with QEMU's very same problem, is tolerated.
    const readsAgree = mismatches.every((m) => sameAsQemuRead(initial, dir, ops, m.index, m.data));
    if (!qemuWentWrong || !readsAgree) return fail(ours.join('\n'));
    return pass("reproduces QEMU 7.2's own inconsistency");
  } catch (e) {
    return fail(`exception: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
