#!/usr/bin/env node
// `npm run fuzz -- [target] [--seeds N] [--seed S] [--start S] [--ops N]`: bundles the fuzz
// target with esbuild into a temporary module (as build.mjs bundles the CLI), runs the seeds
// and prints one line per seed; the exit status is 1 if any seed failed.
import { build } from 'esbuild';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const target = args.find((a, i) => !a.startsWith('--') && !(i > 0 && args[i - 1].startsWith('--'))) ?? 'qcow2';
const single = option('seed', undefined);
const start = option('start', Date.now() % 1000000);
const count = single === undefined ? option('seeds', 20) : 1;
const opCount = option('ops', 40);

// Inside the project, so that the bundle finds the package root and with it the native addon
// (src/native-addon.ts), as the sources do when vitest runs them.
const dir = mkdtempSync(new URL('../../node_modules/.blkio-fuzz-build-', import.meta.url).pathname);
const outfile = join(dir, `${target}.mjs`);
try {
  await build({
    entryPoints: [new URL(`./${target}.ts`, import.meta.url).pathname],
    bundle: true, platform: 'node', format: 'esm', target: 'node20',
    outfile, logLevel: 'warning',
    // Bundle the project's dependencies (fzstd) too, resolved from the project, not the temp directory.
    nodePaths: [new URL('../../node_modules', import.meta.url).pathname],
  });
  const { runSeed } = await import(pathToFileURL(outfile).href);
  let failed = 0;
  for (let i = 0; i < count; i++) {
    const seed = single ?? start + i;
    const r = await runSeed(seed, opCount);
    console.log(`seed ${seed}: ${r.ok ? 'ok' : 'FAIL'} (${r.description})`);
    if (!r.ok) {
      failed++;
      console.log(r.message);
    }
  }
  console.log(`${count - failed}/${count} seeds passed`);
  process.exitCode = failed ? 1 : 0;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
