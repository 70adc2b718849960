// Bundles the CLI into one self-contained file, dist/blkio.js, and the library into dist/index.js.
import { build } from 'esbuild';

const common = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
  // commander is CommonJS: give the ESM bundle a `require` for the Node built-ins it loads.
  banner: { js: "import { createRequire as __blkioCreateRequire } from 'node:module'; const require = __blkioCreateRequire(import.meta.url);" },
};

await Promise.all([
  build({ ...common, entryPoints: ['src/cli/main.ts'], outfile: 'dist/blkio.js' }),
  build({ ...common, entryPoints: ['src/index.ts'], outfile: 'dist/index.js' }),
]);
