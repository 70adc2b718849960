/**
 * blkio's own N-API addon (native/, built by `npm install` into build/Release): the file-system
 * calls Node's fs lacks (src/drivers/file-native.ts) and qcow2's compression codecs from the
 * system libraries (src/drivers/cluster-codecs.ts). Each user declares the exports it needs.
 *
 * The addon is loaded on first use. When it is missing or fails to load, or BLKIO_NO_NATIVE=1
 * is set, `nativeAddon()` returns undefined, quietly: every user has a pure-JS fallback.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Where node-gyp puts the addon, relative to the package root. */
export const ADDON_PATH = join('build', 'Release', 'blkio_native.node');

/** The package root: the nearest folder above this module with a package.json (src/ or dist/ alike). */
function packageRoot(): string | undefined {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) return undefined;
  }
}

let loaded: { addon: object | undefined } | undefined;

/** The addon's exports, or undefined when the addon is not available (or disabled). */
export function nativeAddon(): object | undefined {
  if (!loaded) {
    loaded = { addon: undefined };
    const root = process.env.BLKIO_NO_NATIVE === '1' ? undefined : packageRoot();
    if (root !== undefined) {
      try {
        loaded.addon = createRequire(import.meta.url)(join(root, ADDON_PATH)) as object;
      } catch {
        // No addon built (or not for this platform): the pure-JS paths serve.
      }
    }
  }
  return loaded.addon;
}
