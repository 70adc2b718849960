#!/usr/bin/env node
// blkio against QEMU on the same work: `npm run bench [-- [--runs N] [--markdown] [CASE...]]`.
//
// A case prepares fresh files in a scratch directory, then runs its blkio command and its QEMU
// equivalent (and any extra baselines) N times each, every run on freshly prepared files.
// Printed per case and side: median wall-clock and CPU (user+sys) seconds, the ratios blkio/QEMU
// (and blkio/baseline), and peak RSS. Times come from bash's `time` (wait4, millisecond
// precision), peak RSS from GNU time's %M. On a machine shared with other work the CPU ratio is
// the steadier of the two: waiting for a core inflates wall time on both sides unevenly.
// A second view of memory: each side's peak RSS above its own runtime's floor, measured once at
// the start (blkio: node running nothing under bin/blkio's flags; QEMU: qemu-io reading 4k),
// since most of Node's 38 MiB are pages of the node binary that no blkio change can remove.
// Needs bash, /usr/bin/time, qemu-img/qemu-io and a built dist/blkio.cjs; a few GiB of temporary
// disk; the scratch directory is removed at the end. --markdown adds a table for RESULTS.md.
//
// Adding a case: push { name, setup(dir), prepare(dir), blkio: [argv...], qemu: [[argv...]...] }
// onto CASES. `setup` runs once, `prepare` before every single run; a side with several
// commands (QEMU's stream equivalent) counts their times added up and the largest RSS.
// `minRuns` raises --runs for a case whose times swing from run to run.
// Images several cases only read are named in the case's `shares` and built once (SHARED_BUILDERS).

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// BLKIO=/path/to/blkio benchmarks another build (default: this repository's bin/blkio).
const BLKIO = process.env.BLKIO ?? path.join(REPO, 'bin', 'blkio');
const GiB = 1 << 30;
const MiB = 1 << 20;

/** Run a command, failing loudly: preparation steps must work. */
function sh(argv, cwd, input) {
  const r = spawnSync(argv[0], argv.slice(1), { cwd, input, encoding: 'utf8', maxBuffer: 256 << 20 });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed: ${(r.stderr || r.stdout || '').trim()}`);
}

/** `-c CMD` for each of `count` requests of `size` bytes covering [0, count * size). */
function requests(verb, count, size) {
  return Array.from({ length: count }, (_, i) => ['-c', `${verb} ${i * size} ${size}`]).flat();
}

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'blkio-bench-'));

/** Where a shared image lives (built before the first case that shares it runs). */
const shared = (name) => path.join(scratch, name);

const SHARED_BUILDERS = {
  // 1 GiB of data in every cluster.
  'full.qcow2'(file) {
    sh(['qemu-img', 'create', '-q', '-f', 'qcow2', file, '1G']);
    sh(['qemu-io', '-c', 'write -P 0x5a 0 1G', file]);
  },
  // 8 GiB virtual, every other 64 KiB cluster allocated: 65 536 separate data extents. One
  // qemu-io session in writeback mode takes the 65 536 writes from stdin.
  'sparse-8g.qcow2'(file) {
    sh(['qemu-img', 'create', '-q', '-f', 'qcow2', file, '8G']);
    const script = Array.from({ length: 65536 }, (_, i) => `write -q -P 0x11 ${i * 128 * 1024} 4k\n`).join('');
    sh(['qemu-io', '-t', 'writeback', file], undefined, script);
  },
};

// Writing 1 GiB into the page cache costs both sides system time that swings 2 to 5 times from
// run to run on this VM (page-cache pages the host reclaimed through the balloon fault on first
// touch inside the kernel's copy), more than the tools differ by: these cases take more runs.
const PAGE_CACHE_BOUND_RUNS = 7;

const CASES = [
  {
    name: 'startup: read 4k of raw',
    runs: 15,
    setup(dir) {
      fs.writeFileSync(path.join(dir, 'small.raw'), Buffer.alloc(MiB, 1));
    },
    blkio: [[BLKIO, 'io', '-f', 'raw', '-c', 'read 0 4k', 'small.raw']],
    qemu: [['qemu-io', '-f', 'raw', '-c', 'read 0 4k', 'small.raw']],
    // bin/blkio drops NODE_EXTRA_CA_CERTS (it never opens TLS connections), which spares Node
    // parsing the CA bundle at startup where the environment sets it: both baselines are shown.
    baselines: {
      'node -e 0': [[process.execPath, '-e', '0']],
      'node -e 0 without NODE_EXTRA_CA_CERTS': [['env', '-u', 'NODE_EXTRA_CA_CERTS', process.execPath, '-e', '0']],
    },
  },
  {
    name: 'read 1 GiB of qcow2 in one request',
    shares: ['full.qcow2'],
    blkio: [[BLKIO, 'io', '-c', 'read 0 1G', shared('full.qcow2')]],
    qemu: [['qemu-io', '-c', 'read 0 1G', shared('full.qcow2')]],
  },
  {
    name: 'read 1 GiB of qcow2 as 64 x 16 MiB',
    shares: ['full.qcow2'],
    blkio: [[BLKIO, 'io', ...requests('read', 64, 16 * MiB), shared('full.qcow2')]],
    qemu: [['qemu-io', ...requests('read', 64, 16 * MiB), shared('full.qcow2')]],
  },
  {
    name: 'read 1 GiB through a 2-layer chain (half in each) as 64 x 16 MiB',
    setup(dir) {
      sh(['qemu-img', 'create', '-q', '-f', 'qcow2', 'base.qcow2', '1G'], dir);
      sh(['qemu-io', '-c', 'write -P 0x11 0 512M', 'base.qcow2'], dir);
      sh(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'], dir);
      sh(['qemu-io', '-c', 'write -P 0x22 512M 512M', 'top.qcow2'], dir);
    },
    blkio: [[BLKIO, 'io', ...requests('read', 64, 16 * MiB), 'top.qcow2']],
    qemu: [['qemu-io', ...requests('read', 64, 16 * MiB), 'top.qcow2']],
  },
  {
    // Both tools default to writethrough here: a flush after every write.
    name: 'write 1 GiB into a new qcow2 as 64 x 16 MiB',
    prepare(dir) {
      sh(['qemu-img', 'create', '-q', '-f', 'qcow2', 'new.qcow2', '1G'], dir);
    },
    blkio: [[BLKIO, 'io', ...requests('write', 64, 16 * MiB), 'new.qcow2']],
    qemu: [['qemu-io', ...requests('write', 64, 16 * MiB), 'new.qcow2']],
  },
  {
    name: 'img map --output=json: 8 GiB, 65 536 separate allocated clusters',
    shares: ['sparse-8g.qcow2'],
    blkio: [[BLKIO, 'img', 'map', '--output=json', shared('sparse-8g.qcow2')]],
    qemu: [['qemu-img', 'map', '--output=json', shared('sparse-8g.qcow2')]],
  },
  {
    name: 'img convert -O raw: 1 GiB qcow2',
    shares: ['full.qcow2'],
    prepare(dir) {
      fs.rmSync(path.join(dir, 'out.raw'), { force: true });
    },
    minRuns: PAGE_CACHE_BOUND_RUNS,
    blkio: [[BLKIO, 'img', 'convert', '-f', 'qcow2', '-O', 'raw', shared('full.qcow2'), 'out.raw']],
    qemu: [['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', shared('full.qcow2'), 'out.raw']],
  },
  {
    name: 'img convert -O qcow2: 1 GiB qcow2',
    shares: ['full.qcow2'],
    prepare(dir) {
      fs.rmSync(path.join(dir, 'out.qcow2'), { force: true });
    },
    minRuns: PAGE_CACHE_BOUND_RUNS,
    blkio: [[BLKIO, 'img', 'convert', '-f', 'qcow2', '-O', 'qcow2', shared('full.qcow2'), 'out.qcow2']],
    qemu: [['qemu-img', 'convert', '-f', 'qcow2', '-O', 'qcow2', shared('full.qcow2'), 'out.qcow2']],
  },
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
    minRuns: PAGE_CACHE_BOUND_RUNS,
    blkio: [[BLKIO, 'commit', 'top.qcow2']],
    qemu: [['qemu-img', 'commit', 'top.qcow2']],
  },
];

// bash times the command (TIMEFORMAT: wall, user, sys); GNU time inside it reports peak RSS.
const TIMED = 'TIMEFORMAT="%3R %3U %3S"; time /usr/bin/time -f %M "$@"';

/** One measured command: wall and CPU seconds and peak RSS in KiB, or an error text. */
function measure(argv, cwd) {
  const r = spawnSync('/bin/bash', ['-c', TIMED, 'bash', ...argv], { cwd, encoding: 'utf8', maxBuffer: 256 << 20 });
  const lines = (r.stderr || '').trimEnd().split('\n');
  const [wall, user, sys] = (lines.pop() ?? '').split(' ').map(Number);
  const rssKib = Number(lines.pop());
  if (r.status !== 0) return { error: (lines.find((l) => l.trim()) || `exit ${r.status}`).trim() };
  return { wall, cpu: user + sys, rssKib };
}

/** Run a side's commands once: summed seconds, largest RSS. */
function runSide(commands, cwd) {
  const total = { wall: 0, cpu: 0, rssKib: 0 };
  for (const argv of commands) {
    const m = measure(argv, cwd);
    if (m.error) return m;
    total.wall += m.wall;
    total.cpu += m.cpu;
    total.rssKib = Math.max(total.rssKib, m.rssKib);
  }
  return total;
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Median peak RSS in MiB of a command that does (next to) nothing: a runtime's own floor. */
function floorRssMib(argv, cwd) {
  const samples = Array.from({ length: 5 }, () => {
    const m = measure(argv, cwd);
    if (m.error) throw new Error(`${argv.join(' ')} failed: ${m.error}`);
    return m.rssKib;
  });
  return median(samples) / 1024;
}

/** The floors RSS above floor is counted from: node under bin/blkio's flags, qemu-io's 4k read. */
function measureFloors() {
  const dir = fs.mkdtempSync(path.join(scratch, 'floor-'));
  fs.writeFileSync(path.join(dir, 'small.raw'), Buffer.alloc(MiB, 1));
  try {
    return {
      blkio: floorRssMib(['env', '-u', 'NODE_EXTRA_CA_CERTS', process.execPath, '--no-concurrent-recompilation', '--v8-pool-size=1', '-e', '0'], dir),
      qemu: floorRssMib(['qemu-io', '-f', 'raw', '-c', 'read 0 4k', 'small.raw'], dir),
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function runCase(c, runs) {
  for (const name of c.shares ?? []) if (!fs.existsSync(shared(name))) SHARED_BUILDERS[name](shared(name));
  const dir = fs.mkdtempSync(path.join(scratch, 'case-'));
  try {
    c.setup?.(dir);
    const sides = { blkio: c.blkio, qemu: c.qemu, ...c.baselines };
    const results = {};
    const order = Object.entries(sides);
    // Sides take turns run by run, so a burst of load elsewhere hits all of them alike; the
    // order reverses every run, so no side always follows the same one.
    for (let i = 0; i < runs; i++) {
      for (const [label, commands] of i % 2 ? [...order].reverse() : order) {
        if (results[label]?.error) continue;
        c.prepare?.(dir);
        // Dirty pages left by the preparation or the previous run are written back here, not
        // during (and charged to) the next side's run.
        sh(['sync']);
        const m = runSide(commands, dir);
        if (m.error) results[label] = { error: m.error };
        else (results[label] ??= { samples: [] }).samples.push(m);
      }
    }
    for (const r of Object.values(results)) {
      if (r.error) continue;
      r.wall = median(r.samples.map((s) => s.wall));
      r.cpu = median(r.samples.map((s) => s.cpu));
      r.rssMib = Math.max(...r.samples.map((s) => s.rssKib)) / 1024;
    }
    return results;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const ratio = (a, b) => (a.error || b.error ? '-' : (a.wall / b.wall).toFixed(2));
const cpuRatio = (a, b) => (a.error || b.error ? '-' : (a.cpu / b.cpu).toFixed(2));
const rssRatio = (a, b) => (a.error || b.error ? '-' : (a.rssMib / b.rssMib).toFixed(2));
/** Peak RSS above each side's own floor, and their ratio (none when QEMU's is within 1 MiB of its floor). */
function aboveFloor(blkio, qemu, floors) {
  if (blkio.error || qemu.error) return undefined;
  const b = blkio.rssMib - floors.blkio;
  const q = qemu.rssMib - floors.qemu;
  return { blkio: b.toFixed(1), qemu: q.toFixed(1), ratio: q >= 1 ? (b / q).toFixed(2) : '-' };
}

function report(c, results, floors) {
  const fmt = (r) =>
    r.error ? `failed: ${r.error}` : `wall ${r.wall.toFixed(3)} s  cpu ${r.cpu.toFixed(3)} s  peak RSS ${r.rssMib.toFixed(0)} MiB`;
  console.log(c.name);
  for (const [label, r] of Object.entries(results)) console.log(`  ${label.padEnd(10)} ${fmt(r)}`);
  const { blkio, qemu, ...baselines } = results;
  console.log(`  blkio/QEMU: wall ${ratio(blkio, qemu)}  cpu ${cpuRatio(blkio, qemu)}  RSS ${rssRatio(blkio, qemu)}`);
  const above = aboveFloor(blkio, qemu, floors);
  if (above) console.log(`  peak RSS above own floor: blkio ${above.blkio} MiB  QEMU ${above.qemu} MiB  ratio ${above.ratio}`);
  for (const [label, r] of Object.entries(baselines)) {
    console.log(`  blkio/${label}: wall ${ratio(blkio, r)}  cpu ${cpuRatio(blkio, r)}`);
  }
}

function markdown(rows, floors) {
  const s = (r, key, digits) => (r.error ? 'failed' : r[key].toFixed(digits));
  console.log('\n| case | blkio wall s | QEMU wall s | wall ratio | blkio CPU s | QEMU CPU s | CPU ratio | blkio RSS MiB | QEMU RSS MiB | RSS ratio |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const { c, results } of rows) {
    const { blkio, qemu, ...baselines } = results;
    const line = (name, other) =>
      `| ${name} | ${s(blkio, 'wall', 3)} | ${s(other, 'wall', 3)} | ${ratio(blkio, other)} | ${s(blkio, 'cpu', 3)} | ${s(other, 'cpu', 3)} | ${cpuRatio(blkio, other)} | ${s(blkio, 'rssMib', 0)} | ${s(other, 'rssMib', 0)} | ${rssRatio(blkio, other)} |`;
    console.log(line(c.name, qemu));
    for (const [label, r] of Object.entries(baselines)) console.log(line(`${c.name} (vs ${label})`, r));
  }
  console.log(`\nPeak RSS above each tool's own floor (node under bin/blkio's flags: ${floors.blkio.toFixed(0)} MiB; ` +
    `qemu-io reading 4k: ${floors.qemu.toFixed(0)} MiB):\n`);
  console.log('| case | blkio MiB above floor | QEMU MiB above floor | ratio |');
  console.log('|---|---:|---:|---:|');
  for (const { c, results } of rows) {
    const above = aboveFloor(results.blkio, results.qemu, floors);
    if (above) console.log(`| ${c.name} | ${above.blkio} | ${above.qemu} | ${above.ratio} |`);
  }
}

function main() {
  const args = process.argv.slice(2);
  let runs = 3;
  let wantMarkdown = false;
  const wanted = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--runs') runs = Math.max(1, Number(args[++i]) || 1);
    else if (args[i] === '--markdown') wantMarkdown = true;
    else wanted.push(args[i].toLowerCase());
  }
  if (!process.env.BLKIO && !fs.existsSync(path.join(REPO, 'dist', 'blkio.cjs'))) {
    console.error('bench: dist/blkio.cjs is missing; run npm run build first');
    process.exit(2);
  }
  const cases = CASES.filter((c) => wanted.length === 0 || wanted.some((w) => c.name.toLowerCase().includes(w)));
  const cleanUp = () => fs.rmSync(scratch, { recursive: true, force: true });
  process.on('SIGINT', () => {
    cleanUp();
    process.exit(130);
  });
  try {
    console.log(`median of ${runs} runs per side (unless a case sets its own)`);
    const floors = measureFloors();
    console.log(`peak RSS floors: node under bin/blkio's flags ${floors.blkio.toFixed(1)} MiB, qemu-io reading 4k ${floors.qemu.toFixed(1)} MiB`);
    const rows = [];
    for (const c of cases) {
      const results = runCase(c, c.runs ?? Math.max(runs, c.minRuns ?? 0));
      report(c, results, floors);
      rows.push({ c, results });
    }
    if (wantMarkdown) markdown(rows, floors);
  } finally {
    cleanUp();
  }
}

main();
