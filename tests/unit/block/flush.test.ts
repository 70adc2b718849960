import { beforeEach, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { REQ_FUA } from '../../../src/block/flags.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { blkdebugDriver } from '../../../src/drivers/blkdebug.js';
import { blkverifyDriver } from '../../../src/drivers/blkverify.js';
import { quorumDriver } from '../../../src/drivers/quorum.js';
import { rawDriver } from '../../../src/drivers/raw.js';
import type { FlatOptions, OptionTree } from '../../../src/options/types.js';
import { memoryDisks, memoryDriver } from '../helpers/memory-driver.js';

/** Flat options of a blkdebug node over memory disk `name`, failing flushes with `errno` (0: never). */
function disk(prefix: string, name: string, errno = 0): FlatOptions {
  const opts: FlatOptions = { [`${prefix}driver`]: 'blkdebug', [`${prefix}image.driver`]: 'memory', [`${prefix}image.filename`]: name };
  if (errno) Object.assign(opts, { [`${prefix}inject-error.0.event`]: 'none', [`${prefix}inject-error.0.iotype`]: 'flush', [`${prefix}inject-error.0.errno`]: errno });
  return opts;
}

async function failure(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

describe('flush (QEMU 7.2 bdrv_co_flush)', () => {
  let layer: BlockLayer;
  let events: OptionTree[];
  beforeEach(() => {
    memoryDisks.clear();
    layer = new BlockLayer([memoryDriver, rawDriver, blkdebugDriver, blkverifyDriver, quorumDriver]);
    events = [];
    layer.emitEvent = (event) => events.push(event);
  });
  const open = async (options: FlatOptions, perm = PERM_CONSISTENT_READ | PERM_WRITE) =>
    BlockBackend.attach(await layer.openNode(undefined, options), perm, PERM_ALL);
  const buf = new Uint8Array(512);

  it('syncs a node only when something was written since its last flush', async () => {
    const blk = await open(disk('', 'a', 28));
    expect(await failure(blk.flush())).toBeUndefined();
    await blk.write(0, 512, buf, 0);
    expect(await failure(blk.flush())).toBe('No space left on device');
    expect(await failure(blk.flush())).toBe('No space left on device');
  });

  it('emulates FUA with a flush that syncs only earlier writes', async () => {
    const blk = await open(disk('', 'a', 28));
    expect(await failure(blk.write(0, 512, buf, REQ_FUA))).toBeUndefined();
    expect(await failure(blk.write(0, 512, buf, REQ_FUA))).toBe('No space left on device');
    const above = await open({ driver: 'raw', ...disk('file.', 'b', 28) });
    expect(await failure(above.write(0, 512, buf, REQ_FUA))).toBe('No space left on device');
  });

  it('flushes nothing of a read-only node', async () => {
    const blk = await open({ ...disk('', 'a', 28), 'read-only': 'on' }, PERM_CONSISTENT_READ);
    expect(await failure(blk.flush())).toBeUndefined();
  });

  it('blkverify flushes only the image under test', async () => {
    const raw = await open({ driver: 'blkverify', ...disk('test.', 'a'), ...disk('raw.', 'b', 5) });
    await raw.write(0, 512, buf, 0);
    expect(await failure(raw.flush())).toBeUndefined();
    const test = await open({ driver: 'blkverify', ...disk('test.', 'c', 28), ...disk('raw.', 'd') });
    await test.write(0, 512, buf, 0);
    expect(await failure(test.flush())).toBe('No space left on device');
  });

  it('quorum reports failing children and fails with the most common error below the threshold', async () => {
    const quorum = (threshold: number, errnos: number[]) =>
      open(Object.assign({ driver: 'quorum', 'node-name': `q${threshold}`, 'vote-threshold': threshold }, ...errnos.map((e, i) => ({ ...disk(`children.${i}.`, `d${threshold}${i}`, e), [`children.${i}.node-name`]: `c${threshold}${i}` }))));
    const ok = await quorum(1, [0, 28]);
    await ok.write(0, 512, buf, 0);
    expect(await failure(ok.flush())).toBeUndefined();
    expect(events).toEqual([{ event: 'QUORUM_REPORT_BAD', data: { type: 'flush', error: 'No space left on device', 'node-name': 'c11', 'sector-num': 0, 'sectors-count': 0 } }]);
    const failing = await quorum(3, [5, 28, 28]);
    await failing.write(0, 512, buf, 0).catch(() => {});
    expect(await failure(failing.flush())).toBe('No space left on device');
  });
});
