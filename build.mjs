// Bundles the CLI into dist/blkio.cjs (with a V8 code cache, dist/blkio.cjs.cache) and the library
// into dist/index.js.
//
// The CLI bundle is CommonJS because startup is most of a short command's time: CommonJS skips
// the ESM loader, and esbuild then turns the bundled modules' imports of Node built-ins into
// require() calls inside their lazily run initialisers, so a command loads only what it uses.
// Whitespace and syntax are minified (less to read and parse); names are kept for readable traces.
// bin/blkio compiles the bundle with the code cache, which spares V8 the parse and the lazy
// compilation of the functions every command runs; the cache is made here by running a small
// representative session, and V8 ignores it when it does not fit (other node version or flags).
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const common = {
  bundle: true,
  platform: 'node',
  target: 'node20',
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
};

const CLI_BUNDLE = 'dist/blkio.cjs';

await Promise.all([
  build({
    ...common,
    entryPoints: ['src/cli/main.ts'],
    outfile: CLI_BUNDLE,
    format: 'cjs',
    minifyWhitespace: true,
    minifySyntax: true,
    // Non-ASCII characters are escaped: V8 then holds the source as one byte per character.
    charset: 'ascii',
    // import.meta.url (for createRequire and the addon's path) is computed when first read.
    define: { 'import.meta.url': '__blkioModule.url' },
    // The file is the function bin/blkio calls, CommonJS's module wrapper included: wrapping the
    // source at run time made V8 keep a second copy of it (the joined string, 0.65 MiB).
    banner: {
      // 'use strict' must open the function body to be a directive (esbuild's own comes after the const).
      js: "(function (exports, require, module, __filename, __dirname) {'use strict';" +
        "const __blkioModule = { get url() { return require('node:url').pathToFileURL(__filename).href; } };",
    },
    footer: { js: '\n})' },
  }),
  build({
    ...common,
    entryPoints: ['src/index.ts'],
    outfile: 'dist/index.js',
    format: 'esm',
    // commander is CommonJS: give the ESM bundle a `require` for the Node built-ins it loads.
    banner: { js: "import { createRequire as __blkioCreateRequire } from 'node:module'; const require = __blkioCreateRequire(import.meta.url);" },
  }),
]);

writeCodeCache();

/** Run an image session through bin/blkio, asking it to save V8's code cache at exit. */
function writeCodeCache() {
  const cacheFile = `${CLI_BUNDLE}.cache`;
  fs.rmSync(cacheFile, { force: true });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blkio-build-'));
  const blkio = (args, env = process.env) => {
    // Run as users do, with the Node flags of its #! line.
    const r = spawnSync('bin/blkio', args, { encoding: 'utf8', env });
    if (r.status !== 0) throw new Error(`bin/blkio ${args.join(' ')}: ${r.stderr.trim()}`);
  };
  try {
    const image = path.join(dir, 'cache.qcow2');
    blkio(['img', 'create', '-q', '-f', 'qcow2', image, '1M']);
    blkio(['io', '-c', 'write 0 64k', '-c', 'read -v 0 512', '-c', 'map', image],
      { ...process.env, BLKIO_WRITE_CODE_CACHE: path.resolve(cacheFile) });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
