import { beforeEach, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED } from '../../../src/block/permissions.js';
import type { OptionTree } from '../../../src/options/types.js';
import { quorumDriver } from '../../../src/drivers/quorum.js';
import { memoryDisks, memoryDriver } from '../helpers/memory-driver.js';

const SIZE = 8192;

describe('quorum', () => {
  let layer: BlockLayer;
  let events: OptionTree[];
  beforeEach(() => {
    memoryDisks.clear();
    for (const name of ['a', 'b', 'c']) memoryDisks.set(name, new Uint8Array(SIZE).fill(7));
    layer = new BlockLayer([memoryDriver, quorumDriver]);
    events = [];
    layer.emitEvent = (event) => events.push(event);
    layer.fatal = (message) => {
      throw new Error(message);
    };
  });

  function options(names: string[], extra: Record<string, string | number | boolean> = {}) {
    const opts: Record<string, string | number | boolean> = { driver: 'quorum', 'node-name': 'q', ...extra };
    names.forEach((name, i) => {
      opts[`children.${i}.driver`] = 'memory';
      opts[`children.${i}.filename`] = name;
      opts[`children.${i}.node-name`] = name;
    });
    return opts;
  }

  async function open(names: string[], extra: Record<string, string | number | boolean> = {}, perm = PERM_CONSISTENT_READ | PERM_WRITE) {
    return BlockBackend.attach(await layer.openNode(undefined, options(names, extra)), perm, PERM_ALL);
  }

  const errors: Array<[Record<string, string | number | boolean>, string[], string]> = [
    [{}, ['a'], "Parameter 'vote-threshold' expects a value >= 1"],
    [{ 'vote-threshold': 4 }, ['a', 'b', 'c'], 'threshold may not exceed children count'],
    [{ 'vote-threshold': 1 }, [], 'Number of provided children must be 1 or more'],
    [{ 'vote-threshold': 1, 'read-pattern': 'FIFO' }, ['a'], 'Please set read-pattern as fifo or quorum'],
    [{ 'vote-threshold': 2, blkverify: true }, ['a', 'b', 'c'], 'blkverify=on can only be set if there are exactly two files and vote-threshold is 2'],
    [{ 'vote-threshold': 2, blkverify: true, 'rewrite-corrupted': true }, ['a', 'b'], 'rewrite-corrupted=on cannot be used with blkverify=on'],
    [{ 'vote-threshold': 'x' }, ['a'], "Parameter 'vote-threshold' expects a number"],
    // The threshold is a C int: -1 wraps to 2^64 - 1 and then to -1 again, 2^32 + 2 to 2.
    [{ 'vote-threshold': -1 }, ['a'], "Parameter 'vote-threshold' expects a value >= 1"],
    [{ 'vote-threshold': 2 ** 32 + 2 }, ['a'], 'threshold may not exceed children count'],
    [{ 'vote-threshold': 1, 'children.2.driver': 'memory' }, ['a'], 'Option children is not a valid array'],
  ];
  for (const [extra, names, message] of errors) {
    it(`refuses ${JSON.stringify(extra)} with ${names.length} children: ${message}`, async () => {
      await expect(layer.openNode(undefined, options(names, extra))).rejects.toThrow(message);
    });
  }

  it('refuses children of different lengths', async () => {
    memoryDisks.set('c', new Uint8Array(2 * SIZE));
    await expect(open(['a', 'c'], { 'vote-threshold': 1 })).rejects.toThrow('Could not refresh total sector count: Input/output error');
  });

  it('outvotes a corrupted child and reports it', async () => {
    memoryDisks.get('c')![4096] = 9;
    const blk = await open(['a', 'b', 'c'], { 'vote-threshold': 2 });
    const buf = new Uint8Array(1024);
    await blk.read(3584, 1024, buf);
    expect(buf.every((b) => b === 7)).toBe(true);
    expect(events).toEqual([
      { event: 'QUORUM_REPORT_BAD', data: { type: 'read', 'node-name': 'c', 'sector-num': 7, 'sectors-count': 2 } },
    ]);
    expect(memoryDisks.get('c')![4096]).toBe(9); // not repaired without rewrite-corrupted
  });

  it('fails when no version reaches the threshold', async () => {
    memoryDisks.get('c')![0] = 9;
    const blk = await open(['a', 'b', 'c'], { 'vote-threshold': 3 });
    await expect(blk.read(0, 512, new Uint8Array(512))).rejects.toThrow('Input/output error');
    expect(events.at(-1)).toEqual({ event: 'QUORUM_FAILURE', data: { reference: 'q', 'sector-num': 0, 'sectors-count': 1 } });
  });

  it('breaks ties in favour of the version seen last, as QEMU does', async () => {
    memoryDisks.get('b')!.fill(9);
    const blk = await open(['a', 'b'], { 'vote-threshold': 1 });
    const buf = new Uint8Array(512);
    await blk.read(0, 512, buf);
    expect(buf[0]).toBe(9);
  });

  it('rewrites the corrupted child with rewrite-corrupted, which needs write permission', async () => {
    memoryDisks.get('c')![100] = 9;
    const blk = await open(['a', 'b', 'c'], { 'vote-threshold': 2, 'rewrite-corrupted': true }, PERM_CONSISTENT_READ);
    await blk.read(0, 512, new Uint8Array(512));
    expect(memoryDisks.get('c')![100]).toBe(7);
    const c = layer.findNode('c')!;
    expect(c.parents[0].perm & PERM_WRITE).toBe(PERM_WRITE);
  });

  it('shares only consistent read and write unchanged on its children', async () => {
    await open(['a', 'b'], { 'vote-threshold': 1 });
    const edge = layer.findNode('a')!.parents[0];
    expect(edge.shared).toBe(PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED);
    expect(edge.perm & PERM_WRITE).toBe(PERM_WRITE);
  });

  it('reads the first child that answers with read-pattern=fifo', async () => {
    memoryDisks.get('b')!.fill(9);
    const blk = await open(['b', 'a'], { 'vote-threshold': 1, 'read-pattern': 'fifo' });
    const buf = new Uint8Array(512);
    await blk.read(0, 512, buf);
    expect(buf[0]).toBe(9);
    expect(events).toEqual([]);
  });

  it('ends the program on any difference with blkverify=on', async () => {
    memoryDisks.get('b')![4100] = 9;
    const blk = await open(['a', 'b'], { 'vote-threshold': 2, blkverify: true });
    await expect(blk.read(4096, 512, new Uint8Array(512))).rejects.toThrow('quorum: offset=4096 bytes=512 contents mismatch at offset 4100');
  });

  it('writes to every child', async () => {
    const blk = await open(['a', 'b', 'c'], { 'vote-threshold': 3 });
    await blk.write(0, 512, new Uint8Array(512).fill(3));
    await blk.writeZeroes(512, 512);
    for (const name of ['a', 'b', 'c']) {
      expect(memoryDisks.get(name)![0]).toBe(3);
      expect(memoryDisks.get(name)![600]).toBe(0);
    }
  });
});
