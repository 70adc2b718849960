/**
 * Node built-ins that cost milliseconds to load (crypto, zlib) but serve few commands: each user
 * loads its module on first call, so process startup stays close to bare `node`.
 */
import { createRequire } from 'node:module';

/** Made on first use: a command that loads none of these modules skips it too. */
let requireBuiltin: NodeJS.Require | undefined;

/** A getter for the built-in `name`, loading it the first time it is called. */
export function lazyBuiltin<T>(name: `node:${string}`): () => T {
  let loaded: T | undefined;
  return () => (loaded ??= (requireBuiltin ??= createRequire(import.meta.url))(name) as T);
}
