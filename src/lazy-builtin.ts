/**
 * Node built-ins that cost milliseconds to load (crypto, zlib) but serve few commands: each user
 * loads its module on first call, so process startup stays close to bare `node`.
 */
import { createRequire } from 'node:module';

const requireBuiltin = createRequire(import.meta.url);

/** A getter for the built-in `name`, loading it the first time it is called. */
export function lazyBuiltin<T>(name: `node:${string}`): () => T {
  let loaded: T | undefined;
  return () => (loaded ??= requireBuiltin(name) as T);
}
