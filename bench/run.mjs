#!/usr/bin/env node
// blkio against QEMU on the same work: `npm run bench [-- [--runs N] [CASE...]]`.
//
// A case prepares fresh files in a scratch directory, then runs its blkio command and its QEMU
// equivalent (and any extra baselines) N times each, every run on freshly prepared files.
// Printed per case: median wall-clock seconds of each side, the ratio blkio/QEMU, and peak
// RSS (from /usr/bin/time -f %M when present, else from a node wrapper's resourceUsage, which
// only sees node processes). Needs qemu-img/qemu-io and a built dist/blkio.js; about 2 GiB of
// temporary disk; the scratch directory is removed at the end.
//
// Adding a case: push { name, setup(dir), prepare(dir), blkio: [argv...], qemu: [[argv...]...] }
// onto CASES. `setup` runs once, `prepare` before every single run; a side with several
// commands (QEMU's stream equivalent) counts their times added up and the largest RSS.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// BLKIO=/path/to/blkio benchmarks another build (default: this repository's bin/blkio).
const BLKIO = process.env.BLKIO ?? path.join(REPO, 'bin', 'blkio');

/** Run a command, failing loudly: preparation steps must work. */
function sh(argv, cwd) {
  const r = spawnSync(argv[0], argv.slice(1), { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${(r.stderr || r.stdout || '').trim()}`);
}

const CASES = [
  {
    name: 'stream 1 GiB',
    setup(dir) {
      sh(['qemu-img', 'create', '-q', '-f', 'qcow2', 'base.qcow2', '1G'], dir);
      sh(['qemu-io', '-c', 'write -P 0x5a 0 1G', 'base.qcow2'], dir);
    },
    prepare(dir) {
      sh(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'], dir);
    },
    blkio: [[BLKIO, 'stream', 'top.qcow2']],
    qemu: [['qemu-io', '-C', '-c', 'read 0 1G', 'top.qcow2'], ['qemu-img', 'rebase', '-u', '-b', '', 'top.qcow2']],
  },
  {
    name: 'commit 1 GiB',
    prepare(dir) {
      sh(['qemu-img', 'create', '-q', '-f', 'qcow2', 'base.qcow2', '1G'], dir);
      sh(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'], dir);
      sh(['qemu-io', '-c', 'write -P 0xa5 0 1G', 'top.qcow2'], dir);
    },
    blkio: [[BLKIO, 'commit', 'top.qcow2']],
    qemu: [['qemu-img', 'commit', 'top.qcow2']],
  },
  {
    name: 'startup: read 4k of raw',
    runs: 10,
    setup(dir) {
      fs.writeFileSync(path.join(dir, 'small.raw'), Buffer.alloc(1 << 20, 1));
    },
    blkio: [[BLKIO, 'io', '-f', 'raw', '-c', 'read 0 4k', 'small.raw']],
    qemu: [['qemu-io', '-f', 'raw', '-c', 'read 0 4k', 'small.raw']],
    baselines: { 'node -e 0': [[process.execPath, '-e', '0']] },
  },
];

const haveTime = fs.existsSync('/usr/bin/time');

/** One measured command: seconds and peak RSS in KiB, or an error text. */
function measure(argv, cwd) {
  const wrapped = haveTime
    ? ['/usr/bin/time', '-f', '%M', ...argv]
    : [process.execPath, '-e', RSS_WRAPPER, ...argv];
  const started = process.hrtime.bigint();
  const r = spawnSync(wrapped[0], wrapped.slice(1), { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const lines = (r.stderr || '').trimEnd().split('\n');
  const rssKib = Number(lines.pop());
  if (r.status !== 0) return { error: (lines.find((l) => l.trim()) || `exit ${r.status}`).trim() };
  return { seconds, rssKib: Number.isFinite(rssKib) ? rssKib : NaN };
}

// Without GNU time: run the command as a child of node and print its maxRSS (Linux: KiB).
const RSS_WRAPPER = `
const { spawnSync } = require('node:child_process');
const r = spawnSync(process.argv[1], process.argv.slice(2), { stdio: ['ignore', 'inherit', 'inherit'] });
process.stderr.write('\\n' + process.resourceUsage().maxRSS + '\\n');
process.exit(r.status ?? 1);`;

/** Run a side's commands once: summed seconds, largest RSS. */
function runSide(commands, cwd) {
  let seconds = 0;
  let rssKib = 0;
  for (const argv of commands) {
    const m = measure(argv, cwd);
    if (m.error) return m;
    seconds += m.seconds;
    rssKib = Math.max(rssKib, m.rssKib);
  }
  return { seconds, rssKib };
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function runCase(c, runs, root) {
  const dir = fs.mkdtempSync(path.join(root, 'case-'));
  try {
    c.setup?.(dir);
    const sides = { blkio: c.blkio, qemu: c.qemu, ...c.baselines };
    const results = {};
    for (const [label, commands] of Object.entries(sides)) {
      const samples = [];
      for (let i = 0; i < runs; i++) {
        c.prepare?.(dir);
        const m = runSide(commands, dir);
        if (m.error) {
          results[label] = { error: m.error };
          break;
        }
        samples.push(m);
      }
      results[label] ??= {
        seconds: median(samples.map((s) => s.seconds)),
        rssMib: Math.max(...samples.map((s) => s.rssKib)) / 1024,
      };
    }
    return results;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function report(c, results) {
  const fmt = (r) => (r.error ? `failed: ${r.error}` : `${r.seconds.toFixed(3)} s, peak RSS ${r.rssMib.toFixed(0)} MiB`);
  console.log(`${c.name}`);
  for (const [label, r] of Object.entries(results)) console.log(`  ${label.padEnd(10)} ${fmt(r)}`);
  const { blkio, qemu } = results;
  if (!blkio.error && !qemu.error) console.log(`  ratio blkio/QEMU ${(blkio.seconds / qemu.seconds).toFixed(2)}`);
}

function main() {
  const args = process.argv.slice(2);
  let runs = 3;
  const wanted = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--runs') runs = Math.max(1, Number(args[++i]) || 1);
    else wanted.push(args[i].toLowerCase());
  }
  if (!process.env.BLKIO && !fs.existsSync(path.join(REPO, 'dist', 'blkio.cjs'))) {
    console.error('bench: dist/blkio.cjs is missing; run npm run build first');
    process.exit(2);
  }
  const cases = CASES.filter((c) => wanted.length === 0 || wanted.some((w) => c.name.toLowerCase().includes(w)));
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'blkio-bench-'));
  const cleanUp = () => fs.rmSync(root, { recursive: true, force: true });
  process.on('SIGINT', () => {
    cleanUp();
    process.exit(130);
  });
  try {
    console.log(`median of ${runs} runs per side (unless a case sets its own)${haveTime ? '' : '; RSS of node processes only'}`);
    for (const c of cases) report(c, runCase(c, c.runs ?? runs, root));
  } finally {
    cleanUp();
  }
}

main();
