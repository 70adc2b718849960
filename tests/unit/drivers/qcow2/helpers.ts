/**
 * Shared scaffolding for the qcow2 tests: real qemu-img/qemu-io in a temp directory as the
 * oracle, and images opened through a BlockLayer with all drivers.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockBackend } from '../../../../src/block/backend.js';
import { BlockLayer } from '../../../../src/block/graph.js';
import type { BlockNode } from '../../../../src/block/node.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE } from '../../../../src/block/permissions.js';
import { createImageFile } from '../../../../src/commands/img/create.js';
import { allDrivers } from '../../../../src/drivers/index.js';
import { fileDriver } from '../../../../src/drivers/file.js';
import { qcow2Driver } from '../../../../src/drivers/qcow2/index.js';

export const haveQemu = spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;

export function tempDir(): { dir: string; path: (name: string) => string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'blkio-qcow2-'));
  return { dir, path: (name) => join(dir, name), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** qemu-img with its exit status and both outputs (check and compare exit non-zero on findings). */
export function qemuImgStatus(...args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Run qemu-io commands on an image; throws when qemu-io reports a failure. */
export function qemuIo(file: string, commands: string[], format = 'qcow2'): string {
  const args = ['-f', format];
  for (const c of commands) args.push('-c', c);
  const r = spawnSync('qemu-io', [...args, file], { encoding: 'utf8' });
  if (r.status !== 0 || /failed|error/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io ${commands.join('; ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

export interface OpenedImage {
  layer: BlockLayer;
  node: BlockNode;
  blk: BlockBackend;
  close: () => Promise<void>;
}

/** Open `filename` as qcow2 (discard=unmap, like qemu-io) with a read or read-write root user. */
export async function openQcow2(filename: string, writable = true, extra: Record<string, string> = {}): Promise<OpenedImage> {
  const layer = new BlockLayer(allDrivers);
  const node = await layer.openNode(filename, { driver: 'qcow2', discard: 'unmap', ...(writable ? {} : { 'read-only': 'on' }), ...extra });
  const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ | (writable ? PERM_WRITE | PERM_RESIZE : 0), PERM_ALL);
  return {
    layer, node, blk,
    close: async () => {
      blk.detach();
      await layer.closeAll();
    },
  };
}

/** Create an image with blkio's qcow2 driver (the path `blkio img create` takes). */
export async function createQcow2(filename: string, size: number, options: Record<string, string | number | boolean> = {}): Promise<void> {
  const layer = new BlockLayer(allDrivers);
  try {
    await createImageFile(layer, qcow2Driver, fileDriver, { filename, size: Math.ceil(size / 512) * 512, options: { size, ...options } });
  } finally {
    await layer.closeAll();
  }
}

export function pattern(bytes: number, value: number): Uint8Array {
  return new Uint8Array(bytes).fill(value);
}

/** qemu-img check must find nothing wrong. */
export function expectClean(filename: string): string {
  const r = qemuImgStatus('check', filename);
  if (r.status !== 0) throw new Error(`qemu-img check ${filename} (exit ${r.status}):\n${r.stdout}${r.stderr}`);
  return r.stdout;
}
