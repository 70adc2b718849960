import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { isAllocated } from '../../../src/block/io.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { blkdebugDriver } from '../../../src/drivers/blkdebug.js';
import { parseConfigFile, sectionsFromOptions } from '../../../src/drivers/blkdebug-config.js';
import { copyOnReadDriver } from '../../../src/drivers/copy-on-read.js';
import { rawDriver } from '../../../src/drivers/raw.js';
import { memCowDriver, memoryDisks, memoryDriver } from '../helpers/memory-driver.js';

const CLUSTER = 65536;

describe('blkdebug config file', () => {
  it('reads sections the way QEMU scans its lines', () => {
    const sections = parseConfigFile(
      '# comment\n\n[inject-error]\n  event   =   "read_aio"  \nerrno = "0x1c"\nonce = "yes"\n' +
        '[set-state "id"]\nevent ="none"\nnew_state = "2"\n',
    );
    expect(sections).toEqual([
      { group: 'inject-error', values: new Map<string, unknown>([['event', 'read_aio'], ['errno', 28], ['once', true]]) },
      { group: 'set-state', values: new Map<string, unknown>([['event', 'none'], ['new_state', 2]]) },
    ]);
  });

  it('gives an unquoted value as empty, and an unterminated one up to the end of the text', () => {
    expect(parseConfigFile('[inject-error]\nevent = read_aio\n')[0].values.get('event')).toBe('');
    expect(parseConfigFile('[inject-error]\nevent = "read_aio\n')[0].values.get('event')).toBe('read_aio\n');
  });

  const errors: Array<[string, string]> = [
    ['event = "x"\n', 'no group defined'],
    ['[inject-error]\nevent = "read_aio"\n  \n', 'parse error'],
    ['[inject-error]\n  # c\n', "Invalid parameter '#'"],
    ['[inject-error]\nevent="read_aio"\n', `Invalid parameter 'event="read_aio"'`],
    ['[inject-error]\nerrno = "abc"\n', "Parameter 'errno' expects a number"],
    ['[inject-error]\nonce = "maybe"\n', "Parameter 'once' expects 'on' or 'off'"],
    ['[bogus]\nevent = "read_aio"\n', "There is no option group 'bogus'"],
    ['[inject-error\nevent = "read_aio"\n', "There is no option group 'inject-error\n'"],
    ['[set-state]\nfoo = "1"\n', "Invalid parameter 'foo'"],
  ];
  for (const [text, message] of errors) {
    it(`refuses ${JSON.stringify(text)}`, () => {
      expect(() => parseConfigFile(text)).toThrow(message);
    });
  }
});

describe('blkdebug rule options', () => {
  it('takes one section or a list', () => {
    expect(sectionsFromOptions('inject-error', { event: 'read_aio', errno: 28 })).toHaveLength(1);
    expect(sectionsFromOptions('inject-error', { '0.event': 'read_aio', '1.event': 'write_aio' })).toHaveLength(2);
  });

  const errors: Array<[Record<string, string>, string]> = [
    [{ event: 'read_aio', foo: '1' }, "Unknown option 'foo' for [inject-error]"],
    [{ '0.event': 'read_aio', foo: '1' }, "Unused option 'foo' for [inject-error]"],
    [{ '1.event': 'read_aio' }, "Unused option '1.event' for [inject-error]"],
    [{ '0': 'x' }, '[inject-error] section (index 0) does not consist of keys'],
    [{ '0.event': 'read_aio', '0.foo': '1' }, "[inject-error] section doesn't support the option 'foo'"],
    [{ '0.errno': 'abc' }, "Parameter 'errno' expects a number"],
  ];
  for (const [options, message] of errors) {
    it(`refuses ${JSON.stringify(options)}`, () => {
      expect(() => sectionsFromOptions('inject-error', options)).toThrow(message);
    });
  }
});

describe('blkdebug driver', () => {
  let layer: BlockLayer;
  let printed: string[];
  beforeEach(() => {
    memoryDisks.clear();
    layer = new BlockLayer([memoryDriver, memCowDriver, rawDriver, copyOnReadDriver, blkdebugDriver]);
    printed = [];
    layer.print = (line) => printed.push(line);
  });

  /** raw -> blkdebug -> memory: raw fires read_aio / write_aio on blkdebug. */
  async function rawOverBlkdebug(options: Record<string, string | number | boolean>) {
    memoryDisks.set('disk', new Uint8Array(CLUSTER).fill(0x5a));
    const opts: Record<string, string | number | boolean> = { driver: 'raw', 'file.driver': 'blkdebug', 'file.image.driver': 'memory', 'file.image.filename': 'disk' };
    for (const [k, v] of Object.entries(options)) opts[`file.${k}`] = v;
    const node = await layer.openNode(undefined, opts);
    return BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
  }

  const read = (blk: BlockBackend, offset: number, bytes: number) => blk.read(offset, bytes, new Uint8Array(bytes));

  it('raises the generic write events on itself, padding unaligned writes below a raw node', async () => {
    const blk = await rawOverBlkdebug({ align: 4096 });
    expect(blk.root.node.limits.requestAlignment).toBe(1);
    // The driver object is shared by every blkdebug node: the spy calls through and is removed after.
    const spy = vi.spyOn(blkdebugDriver as Required<typeof blkdebugDriver>, 'debugEvent');
    const events = () => spy.mock.calls.map((call) => call[1]);
    try {
      await blk.write(100, 200, new Uint8Array(200), 0);
      expect(events()).toEqual(['write_aio', 'pwritev_rmw_head', 'pwritev_rmw_tail', 'pwritev_rmw_after_head',
        'pwritev_rmw_after_tail', 'pwritev', 'pwritev_done']);
      // Zeroes: the padded blocks as data, the aligned middle as a zero write.
      spy.mockClear();
      await blk.writeZeroes(100, 9000, 0);
      expect(events()).toEqual(['pwritev_rmw_head', 'pwritev_rmw_after_head', 'pwritev_rmw_tail', 'pwritev_rmw_after_tail',
        'pwritev', 'pwritev_done', 'pwritev_zero', 'pwritev_done', 'pwritev', 'pwritev_done']);
    } finally {
      spy.mockRestore();
    }
  });

  it('fails requests after the event, at the rule sector only', async () => {
    const blk = await rawOverBlkdebug({ 'inject-error.0.event': 'read_aio', 'inject-error.0.sector': 2 });
    await expect(read(blk, 0, 1024)).resolves.toBeUndefined();
    await expect(read(blk, 0, 1025)).rejects.toThrow('Input/output error');
  });

  it('uses errno, once, iotype and the first-defined matching rule', async () => {
    const blk = await rawOverBlkdebug({
      'inject-error.0.event': 'read_aio', 'inject-error.0.errno': 28, 'inject-error.0.once': true,
      'inject-error.1.event': 'read_aio', 'inject-error.1.iotype': 'write',
    });
    await expect(read(blk, 0, 512)).rejects.toThrow('No space left on device');
    await expect(read(blk, 0, 512)).resolves.toBeUndefined();
    // write_aio has no rules, so it leaves the armed set alone: the write rule still holds.
    await expect(blk.write(0, 512, new Uint8Array(512))).rejects.toThrow('Input/output error');
  });

  it('moves through states; rules for `none` apply from the start', async () => {
    const blk = await rawOverBlkdebug({
      'set-state.0.event': 'none', 'set-state.0.new_state': 2,
      'set-state.1.event': 'read_aio', 'set-state.1.state': 2, 'set-state.1.new_state': 3,
      'inject-error.0.event': 'read_aio', 'inject-error.0.state': 3,
    });
    await expect(read(blk, 0, 512)).resolves.toBeUndefined();
    await expect(read(blk, 0, 512)).rejects.toThrow('Input/output error');
  });

  it('reads its config file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'blkdebug-'));
    writeFileSync(join(dir, 'c.conf'), '[inject-error]\nevent = "read_aio"\n');
    const blk = await rawOverBlkdebug({ config: join(dir, 'c.conf') });
    await expect(read(blk, 0, 512)).rejects.toThrow('Input/output error');
    await expect(rawOverBlkdebug({ config: join(dir, 'missing') }))
      .rejects.toThrow('Could not read blkdebug config file: No such file or directory');
  });

  it('validates events, iotypes, limits and permission lists', async () => {
    const open = (o: Record<string, string | number | boolean>) => rawOverBlkdebug(o);
    await expect(open({ 'inject-error.0.errno': 5 })).rejects.toThrow('Missing event name for rule');
    await expect(open({ 'inject-error.0.event': 'bogus' })).rejects.toThrow('invalid parameter value: bogus');
    await expect(open({ 'inject-error.0.event': 'none', 'inject-error.0.iotype': 'x' })).rejects.toThrow('invalid parameter value: x');
    await expect(open({ align: 3 })).rejects.toThrow('Cannot meet constraints with align 3');
    await expect(open({ align: 4096, 'max-transfer': 512 })).rejects.toThrow('Cannot meet constraints with max-transfer 512');
    await expect(open({ 'opt-write-zero': 4096, 'max-write-zero': 2048 })).rejects.toThrow('Cannot meet constraints with max-write-zero 2048');
    await expect(open({ 'opt-discard': 4096, 'max-discard': 2048 })).rejects.toThrow('Cannot meet constraints with max-discard 2048');
    await expect(open({ 'take-child-perms.0': 'bogus' })).rejects.toThrow("Parameter 'null' does not accept value 'bogus'");
    await expect(open({ 'take-child-perms.1': 'write' })).rejects.toThrow('List indices are not contiguous');
  });

  it('sets the node limits', async () => {
    const blk = await rawOverBlkdebug({ align: 4096, 'max-transfer': 8192, 'opt-discard': 8192 });
    const limits = blk.node.file!.node.limits;
    expect(limits).toMatchObject({ requestAlignment: 4096, maxTransfer: 8192, discardAlignment: 8192 });
  });

  it('takes only the largest transfer from its image, not its zero and discard limits', async () => {
    memoryDisks.set('disk', new Uint8Array(CLUSTER));
    const node = await layer.openNode(undefined, {
      driver: 'blkdebug', 'image.driver': 'blkdebug', 'image.opt-write-zero': CLUSTER, 'image.max-write-zero': CLUSTER,
      'image.opt-discard': CLUSTER, 'image.max-transfer': 8192, 'image.image.driver': 'memory', 'image.image.filename': 'disk',
    });
    expect(node.limits).toEqual({ requestAlignment: 1, maxTransfer: 8192, zeroAlignment: 0, maxZeroes: 0, discardAlignment: 0, maxDiscard: 0 });
  });

  it('splits the filename into config and image', () => {
    const options: Record<string, unknown> = {};
    blkdebugDriver.parseFilename!('blkdebug::img.raw', options);
    expect(options).toEqual({ 'x-image': 'img.raw' });
    blkdebugDriver.parseFilename!('blkdebug:c.conf:img:with:colons', options);
    expect(options).toEqual({ config: 'c.conf', 'x-image': 'img:with:colons' });
    expect(() => blkdebugDriver.parseFilename!('blkdebug:img.raw', {})).toThrow('blkdebug requires both config file and image path');
  });

  it('suspends a request at a breakpoint until resumed', async () => {
    const blk = await rawOverBlkdebug({});
    const bd = blk.node.file!.node;
    blkdebugDriver.debugBreakpoint!(bd as never, 'read_aio', 'A');
    expect(() => blkdebugDriver.debugBreakpoint!(bd as never, 'bogus', 'A')).toThrow('No such file or directory');
    let done = false;
    const request = read(blk, 0, 512).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 5));
    expect(blkdebugDriver.debugIsSuspended!(bd as never, 'A')).toBe(true);
    expect(done).toBe(false);
    blkdebugDriver.debugResume!(bd as never, 'A');
    await request;
    expect(printed).toEqual(["blkdebug: Suspended request 'A'", "blkdebug: Resuming request 'A'"]);
    expect(() => blkdebugDriver.debugResume!(bd as never, 'A')).toThrow('No such file or directory');
    expect(() => blkdebugDriver.debugRemoveBreakpoint!(bd as never, 'A')).toThrow('No such file or directory');
  });

  it('fails the copy-on-read write of a cluster (cor_write), sparing allocated clusters', async () => {
    memoryDisks.set('base', new Uint8Array(4 * CLUSTER));
    memoryDisks.set('top', new Uint8Array(4 * CLUSTER));
    await layer.openNode(undefined, { driver: 'memory', filename: 'base', 'node-name': 'base' });
    const top = await layer.openNode(undefined, {
      driver: 'memcow', 'node-name': 'top', 'file.driver': 'memory', 'file.filename': 'top', backing: 'base',
    });
    const writer = BlockBackend.attach(top, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    await writer.writeZeroes(CLUSTER, CLUSTER);
    writer.detach();
    const open = async (sector: number) => {
      const bd = await layer.openNode(undefined, {
        driver: 'blkdebug', image: 'top', 'inject-error.0.event': 'cor_write', 'inject-error.0.sector': sector,
      });
      const cor = await layer.openNode(undefined, { driver: 'copy-on-read', file: bd.nodeName });
      return BlockBackend.attach(cor, PERM_CONSISTENT_READ, PERM_ALL);
    };
    // The cluster at 64k is allocated already: only the one at 128k is copied.
    const spared = await open(CLUSTER / 512);
    await expect(read(spared, CLUSTER, 2 * CLUSTER)).resolves.toBeUndefined();
    expect(await isAllocated(top, 2 * CLUSTER, CLUSTER)).toEqual({ allocated: true, pnum: CLUSTER });
    const failing = await open((3 * CLUSTER) / 512);
    await expect(read(failing, 3 * CLUSTER, 512)).rejects.toThrow('Input/output error');
  });
});
