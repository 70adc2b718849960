import { describe, expect, it } from 'vitest';
import { blockStatusAbove, isAllocatedAbove } from '../../../src/block/io.js';
import { BlockBackend } from '../../../src/block/backend.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { STATUS_ALLOCATED, STATUS_DATA, STATUS_EOF, STATUS_OFFSET_VALID, STATUS_ZERO } from '../../../src/block/flags.js';
import { memoryDisks } from '../helpers/memory-driver.js';
import { CLUSTER, fill, newLayer, openChain } from '../jobs/fixtures.js';

const DATA = STATUS_DATA | STATUS_OFFSET_VALID | STATUS_ALLOCATED;

/** Status and pnum in clusters, and the depth: what the walk's callers look at. */
async function statusAbove(...args: Parameters<typeof blockStatusAbove>) {
  const r = await blockStatusAbove(...args);
  return { status: r.status, clusters: r.pnum / CLUSTER, depth: r.depth };
}

describe('blockStatusAbove', () => {
  it('answers with the first layer from the top that holds the range, down to a base', async () => {
    const layer = newLayer();
    const [base, mid, top] = await openChain(layer, ['base', 'mid', 'top'], 8 * CLUSTER);
    await fill(base, 0, 4, 1);
    await fill(mid, 2, 4, 2);
    const user = BlockBackend.attach(top, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    await user.writeZeroes(3 * CLUSTER, CLUSTER);

    // Above base: nothing in [0, 2), mid's data at 2, top's zeroes at 3.
    expect(await statusAbove(top, base, 0, 8 * CLUSTER)).toEqual({ status: 0, clusters: 2, depth: 1 });
    expect(await statusAbove(top, base, 2 * CLUSTER, 8 * CLUSTER)).toEqual({ status: DATA, clusters: 1, depth: 1 });
    expect(await statusAbove(top, base, 3 * CLUSTER, 8 * CLUSTER))
      .toEqual({ status: STATUS_ZERO | STATUS_ALLOCATED, clusters: 1, depth: 0 });
    // The base itself is asked with includeBase, and when nothing bounds the walk.
    expect(await statusAbove(top, base, 0, 8 * CLUSTER, true)).toEqual({ status: DATA, clusters: 2, depth: 2 });
    expect(await statusAbove(top, undefined, 0, 8 * CLUSTER)).toEqual({ status: DATA, clusters: 2, depth: 2 });
    // Below everything: the bottom image reads as zeroes, up to the end of top.
    expect(await statusAbove(top, undefined, 6 * CLUSTER, 2 * CLUSTER))
      .toEqual({ status: STATUS_ZERO | STATUS_EOF, clusters: 2, depth: 2 });
    // Top as its own base: nothing is asked.
    expect(await statusAbove(top, top, 0, 8 * CLUSTER)).toEqual({ status: 0, clusters: 8, depth: 0 });
    // Past the end of top.
    expect(await statusAbove(top, undefined, 8 * CLUSTER, CLUSTER)).toEqual({ status: STATUS_EOF, clusters: 0, depth: 0 });
  });

  it('counts the zeroes past the end of a shorter layer as allocated there, and filters in no depth', async () => {
    const layer = newLayer();
    const [base] = await openChain(layer, ['base'], 8 * CLUSTER);
    await fill(base, 0, 8, 1);
    memoryDisks.set('short', new Uint8Array(4 * CLUSTER));
    const short = await layer.openNode(undefined, {
      driver: 'memcow', 'node-name': 'short', 'file.driver': 'memory', 'file.filename': 'short', backing: 'base',
    });
    const filter = await layer.openNode(undefined, { driver: 'copy-on-read', 'node-name': 'cor', file: 'short' });
    memoryDisks.set('top', new Uint8Array(8 * CLUSTER));
    const top = await layer.openNode(undefined, {
      driver: 'memcow', 'node-name': 'top', 'file.driver': 'memory', 'file.filename': 'top', backing: 'cor',
    });

    expect(await statusAbove(top, undefined, 0, 8 * CLUSTER)).toEqual({ status: DATA, clusters: 4, depth: 2 });
    expect(await statusAbove(top, undefined, 4 * CLUSTER, 4 * CLUSTER))
      .toEqual({ status: STATUS_ZERO | STATUS_ALLOCATED | STATUS_EOF, clusters: 4, depth: 1 });
    // A filter above the short layer ends where it does.
    expect(await statusAbove(top, short, 4 * CLUSTER, 4 * CLUSTER))
      .toEqual({ status: STATUS_ZERO | STATUS_ALLOCATED | STATUS_EOF, clusters: 4, depth: 1 });
    // Top itself reads zeroes past the end of its backing, but does not hold them.
    expect(await statusAbove(top, filter, 4 * CLUSTER, 4 * CLUSTER)).toEqual({ status: STATUS_ZERO | STATUS_EOF, clusters: 4, depth: 0 });
    expect(await isAllocatedAbove(top, short, true, 4 * CLUSTER, 4 * CLUSTER)).toEqual({ allocated: true, pnum: 4 * CLUSTER, depth: 1 });
    // Past the end of its top, isAllocatedAbove finds the whole range unallocated (copy-on-read reads it all).
    expect(await isAllocatedAbove(filter, base, true, 4 * CLUSTER, 4 * CLUSTER)).toEqual({ allocated: false, pnum: 4 * CLUSTER, depth: 0 });
  });
});
