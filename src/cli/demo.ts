/**
 * `blkio demo`: the README's main job on an embedded example. In a temporary directory it
 * builds a base image and an empty overlay, shows the overlay's allocation, reads through a
 * copy-on-read filter with a user that holds no write permission, and shows the allocation
 * again: the data was copied up. Nothing of the user's is touched.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import chalk from 'chalk';
import { runImg } from './img.js';
import { runGraph } from './graph.js';
import { runIo } from './io.js';

export async function runDemo(): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'blkio-demo-'));
  const base = join(dir, 'base.qcow2');
  const top = join(dir, 'top.qcow2');
  const corGraph = `json:{"driver": "copy-on-read", "read-only": false, "file": {"driver": "qcow2", "file": {"driver": "file", "filename": "${top}"}}}`;
  const steps: Array<[string, string[], (argv: string[]) => Promise<number>]> = [
    ['A 64 MiB base image', ['create', '-f', 'qcow2', base, '64M'], runImg],
    ['Data in the base: 0x11 at 0, 0x22 at 32 MiB', ['-f', 'qcow2', '-c', 'write -P 0x11 0 4M', '-c', 'write -P 0x22 32M 1M', base], runIo],
    ['An empty overlay on top of it', ['create', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top], runImg],
    ['What the overlay holds itself (nothing yet)', ['-f', 'qcow2', '-c', 'map', top], runIo],
    ['The graph: copy-on-read filter -> qcow2 overlay -> base', ['-r', corGraph], runGraph],
    ['Read 8 MiB through the copy-on-read filter, as a user without write permission', ['-r', '-c', 'read -P 0x11 0 4M', '-c', 'read -P 0 4M 4M', corGraph], runIo],
    ['What the overlay holds now: the clusters that were read were copied up', ['-f', 'qcow2', '-c', 'map', top], runIo],
    ['The overlay is consistent', ['check', top], runImg],
  ];
  try {
    for (const [title, argv, run] of steps) {
      process.stdout.write(`\n${chalk.bold.cyan('== ' + title)}\n`);
      const status = await run(argv);
      if (status !== 0) return status;
    }
    process.stdout.write(`\n${chalk.green('Done.')} (images were in ${dir}, now removed)\n`);
    return 0;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
