import { beforeEach, describe, expect, it } from 'vitest';
import { BlockLayer } from '../../../../src/block/graph.js';
import type { BdrvChild } from '../../../../src/block/child.js';
import { ROLE_FILTER_CHILD, type BlockDriver } from '../../../../src/block/driver.js';
import { BlkioError } from '../../../../src/errors.js';
import { allDrivers } from '../../../../src/drivers/index.js';
import { IO_COMMANDS, IoSession, runCommandLine, splitCommandLine } from '../../../../src/commands/io/index.js';
import { defaultOpenMode, openFile } from '../../../../src/commands/io/open.js';
import { parsePattern, strtolWhole } from '../../../../src/commands/io/args.js';
import { sleepDuration } from '../../../../src/commands/io/control.js';

/** A session whose output is collected, stdout and stderr marked, timings masked. */
function captureSession(drivers: readonly BlockDriver<any>[] = allDrivers): { session: IoSession; output: () => string } {
  let text = '';
  const layer = new BlockLayer(drivers);
  const session = new IoSession({
    layer,
    commands: IO_COMMANDS,
    program: 'blkio',
    streams: { stdout: (t) => (text += t), stderr: (t) => (text += t.replace(/^/gm, 'E: ').replace(/E: $/, '')) },
  });
  layer.warn = (m) => session.warn(m);
  const output = () => {
    const result = text.replace(/ops; [^\n]*/g, 'ops; TIME');
    text = '';
    return result;
  };
  return { session, output };
}

async function run(session: IoSession, ...lines: string[]): Promise<number[]> {
  const results: number[] = [];
  for (const line of lines) results.push(await runCommandLine(session, line));
  return results;
}

describe('command lines', () => {
  it('split on single spaces, empty fields dropped, tabs kept', () => {
    expect(splitCommandLine('  read   0\t1  ')).toEqual(['read', '0\t1']);
    expect(splitCommandLine('')).toEqual([]);
  });
});

describe('strtol-style arguments', () => {
  it('reads decimal, hex and octal, and rejects trailing garbage', () => {
    expect(strtolWhole('021')).toBe(17n);
    expect(strtolWhole('0x1F')).toBe(31n);
    expect(strtolWhole('-0')).toBe(0n);
    expect(strtolWhole('0x')).toBeUndefined();
    expect(strtolWhole('1.5')).toBeUndefined();
  });

  it('saturates at LONG_MIN and LONG_MAX like strtol', () => {
    expect(strtolWhole('99999999999999999999')).toBe((1n << 63n) - 1n);
    expect(strtolWhole('-99999999999999999999')).toBe(-(1n << 63n));
  });

  it('accepts pattern bytes 0..255 only', () => {
    const { session, output } = captureSession();
    expect(parsePattern(session, '255')).toBe(255);
    expect(parsePattern(session, '256')).toBeUndefined();
    expect(parsePattern(session, '-1')).toBeUndefined();
    expect(output()).toBe('256 is not a valid pattern byte\n-1 is not a valid pattern byte\n');
  });
});

describe('sleep', () => {
  const now = 1_700_000_000_000n * 1_000_000n;
  it('waits the milliseconds given', () => {
    expect(sleepDuration(0n, now)).toBe(0);
    expect(sleepDuration(1500n, now)).toBe(1500);
  });

  it('wraps like the 64-bit timer arithmetic: huge values expire at once or far ahead', () => {
    expect(sleepDuration((1n << 63n) - 1n, now)).toBe(0);
    expect(sleepDuration(9_223_372_036_854n, now)).toBe(0);
    expect(sleepDuration(7_000_000_000_000n, now)).toBe(7_000_000_000_000);
  });
});

describe('qemu-io commands on a null-co image', () => {
  let session: IoSession;
  let output: () => string;

  beforeEach(async () => {
    ({ session, output } = captureSession());
    expect(await openFile(session, undefined, { driver: 'null-co', size: '1M', 'read-zeroes': 'on' }, defaultOpenMode())).toBe(true);
  });

  it('reads with verification, hexdump and report', async () => {
    expect(await run(session, 'read -v -P 0 0 4', 'read -P 1 0 4')).toEqual([0, -1]);
    expect(output()).toBe(
      '00000000:  00 00 00 00  ....\nread 4/4 bytes at offset 0\n4 bytes, 1 ops; TIME\n' +
        'Pattern verification failed at offset 0, 4 bytes\nread 4/4 bytes at offset 0\n4 bytes, 1 ops; TIME\n',
    );
  });

  it('checks argument counts, usage and unknown commands', async () => {
    expect(await run(session, 'read 0', 'read 0 1 2', 'bogus', 'map x', 'alloc 0 1 2')).toEqual([-1, -1, -1, -1, -1]);
    expect(output()).toBe(
      'E: bad argument count 1 to read, expected at least 2 arguments\n' +
        'read [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset\n' +
        'E: command "bogus" not found\n' +
        'E: bad argument count 1 to map, expected 0 arguments\n' +
        'E: bad argument count 3 to alloc, expected between 1 and 2 arguments\n',
    );
  });

  it('prints the write option conflicts in qemu-io order', async () => {
    expect(await run(session, 'write -n -u 0 1', 'write -z -P 1 0 1', 'write 0 2147483137', 'write -c 1 512')).toEqual([-1, -1, -1, -1]);
    expect(output()).toBe(
      '-n requires -z to be specified\n' +
        'Only one of -z, -P, and -s can be specified at the same time\n' +
        'length cannot exceed 2147483136 without -n, given 2147483137\n' +
        "1 is not a sector-aligned value for 'offset'\n",
    );
  });

  it('reads the options read and write commands share in order: -i ends the command, a bad value fails it', async () => {
    expect(await run(session, 'aio_read -i -x 0 1', 'aio_write -q -i 0 1', 'read -P 300 -i 0 1', 'read -l x -P 0 0 1', 'write -C -q -P 0 0 1'))
      .toEqual([0, 0, -1, -1, 0]);
    expect(output()).toBe(
      'injecting invalid read request\ninjecting invalid write request\n' +
        '300 is not a valid pattern byte\n' +
        'Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- x\n',
    );
  });

  it('reports aio completions when they complete, and aio_flush waits', async () => {
    expect(await run(session, 'aio_read -P 0 0 512', 'aio_write -P 7 512 512 512', 'aio_flush')).toEqual([0, 0, 0]);
    expect(output()).toBe(
      'read 512/512 bytes at offset 0\n512 bytes, 1 ops; TIME\nwrote 1024/1024 bytes at offset 512\n1 KiB, 1 ops; TIME\n',
    );
  });

  it('holds aio reports until qemu-io would poll: failures, then reads, then writes, newest first', async () => {
    expect(await run(
      session, 'aio_write -q 0 1', 'aio_read -P 0 1 1', 'aio_write -P 7 2 1', 'aio_read -P 0 3 1', 'aio_read 2M 1',
      'help quit', 'aio_flush',
    )).toEqual([0, 0, 0, 0, 0, 0, 0]);
    expect(output()).toBe(
      'quit -- exit the program\nreadv failed: Input/output error\n' +
        'read 1/1 bytes at offset 3\n1 bytes, 1 ops; TIME\nread 1/1 bytes at offset 1\n1 bytes, 1 ops; TIME\n' +
        'wrote 1/1 bytes at offset 2\n1 bytes, 1 ops; TIME\n',
    );
  });

  it('reports finished aio reads before the output of a later command, writes only at aio_flush or sleep', async () => {
    expect(await run(session, 'aio_write -P 7 0 1', 'aio_read -P 0 1 1', 'read -P 0 2 1', 'sleep 1', 'help quit')).toEqual([0, 0, 0, 0, 0]);
    expect(output()).toBe(
      'read 1/1 bytes at offset 1\n1 bytes, 1 ops; TIME\nread 1/1 bytes at offset 2\n1 bytes, 1 ops; TIME\n' +
        'wrote 1/1 bytes at offset 0\n1 bytes, 1 ops; TIME\nquit -- exit the program\n',
    );
  });

  it('answers length, info, map and alloc', async () => {
    expect(await run(session, 'length', 'info', 'map', 'alloc 1M', 'alloc 0 2M')).toEqual([0, -1, 0, 0, 0]);
    expect(output()).toBe(
      '1 MiB\nformat name: null-co\nformat name: null-co\n' +
        '1 MiB (0x100000) bytes     allocated at offset 0 bytes (0x0)\n' +
        '0/0 bytes allocated at offset 1 MiB\n1048576/1048576 bytes allocated at offset 0 bytes\n',
    );
  });

  it('lists the commands sorted and explains one', async () => {
    await run(session, 'help');
    const lines = output().split('\n');
    expect(lines[0]).toBe('abort -- simulate a program crash using abort(3)');
    expect(lines).toContain('map  -- prints the allocated areas of a file');
    expect(lines.slice(-3)).toEqual(['', "Use 'help commandname' for extended help.", '']);
    await run(session, 'help r', 'help nope');
    expect(output().split('\n').slice(0, 3)).toEqual([
      'r [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset', '', ' reads a range of bytes from the given offset',
    ]);
  });

  it('refuses a second open and reopens the image read-only', async () => {
    expect(await run(session, 'open -o driver=null-co', 'reopen -r', 'write 0 1', 'reopen -w', 'write -q 0 1', 'reopen -r -w')).toEqual([
      -1, 0, -1, 0, 0, -1,
    ]);
    expect(output()).toBe(
      "E: blkio: file open already, try 'help close'\nE: blkio: Block node is read-only\nE: blkio: Only one -r/-w option may be given\n",
    );
    expect(await run(session, 'close', 'length')).toEqual([0, -1]);
    expect(output()).toBe("E: no file open, try 'help open'\n");
  });

  it('refuses reopen -r under -C, and any reopen of a graph with a node QEMU cannot reopen', async () => {
    await run(session, 'close', 'open -C -o driver=null-co,node-name=disk');
    expect(await run(session, 'reopen -o discard=bogus', 'reopen -r', 'reopen -w', 'close')).toEqual([-1, -1, 0, 0]);
    expect(output()).toBe("E: blkio: Invalid discard option\nE: blkio: Can't set node 'disk' to r/o with copy-on-read enabled\n");
    await run(session, 'open -o driver=raw,file.driver=copy-on-read,file.node-name=cor,file.file.driver=null-co');
    expect(await run(session, 'reopen', 'reopen -r')).toEqual([-1, -1]);
    expect(output()).toBe("E: blkio: Block format 'copy-on-read' used by node 'cor' does not support reopening files\n".repeat(2));
  });

  it('puts every node back as it was when a driver fails to reopen read-only', async () => {
    /** A filter whose driver cannot give up write access. */
    const stuckWritable: BlockDriver<{ file: BdrvChild }> = {
      name: 'stuck-writable',
      kind: 'filter',
      isFilter: true,
      options: {},
      async open(_node, ctx) {
        return { file: (await ctx.openChild('file', ROLE_FILTER_CHILD))! };
      },
      async reopen(node) {
        if (node.readOnly) throw new BlkioError('EBUSY', 'cannot give up write access');
      },
      getLength: (node) => node.state.file.getLength(),
      read: (node, offset, bytes, buf, flags) => node.state.file.read(offset, bytes, buf, flags),
      write: (node, offset, bytes, buf, flags) => node.state.file.write(offset, bytes, buf, flags),
    };
    const stuck = captureSession([...allDrivers, stuckWritable]);
    await run(stuck.session, 'open -o driver=raw,node-name=top,file.driver=stuck-writable,file.node-name=mid,file.file.driver=null-co,file.file.node-name=bottom');
    expect(await run(stuck.session, 'reopen -r', 'write -q 0 512')).toEqual([-1, 0]);
    expect(['top', 'mid', 'bottom'].map((name) => stuck.session.layer.findNode(name)!.readOnly)).toEqual([false, false, false]);
  });

  it("takes a child's read-only option, and keeps it for later reopens", async () => {
    await run(session, 'close', 'open -o driver=raw,node-name=top,file.driver=null-co,file.node-name=bottom');
    expect(await run(session, 'reopen -o file.read-only=on', 'reopen -o file.read-only=x', 'reopen -r -o file.read-only=off')).toEqual([-1, -1, 0]);
    expect(output()).toBe(
      "E: blkio: Read-only block node 'bottom' cannot support read-write users\nE: blkio: Parameter 'read-only' expects 'on' or 'off'\n",
    );
    const bottom = session.layer.findNode('bottom')!;
    expect([session.layer.findNode('top')!.readOnly, bottom.readOnly]).toEqual([true, false]);
    expect(await run(session, 'reopen -r')).toEqual([0]);
    expect(bottom.readOnly).toBe(false);
  });

  it('reports breakpoints as unsupported without a blkdebug node', async () => {
    expect(await run(session, 'break read_aio a', 'remove_break a', 'resume a')).toEqual([-1, -1, -1]);
    expect(output()).toBe(
      'Could not set breakpoint: Operation not supported\n' +
        'Could not remove breakpoint a: Operation not supported\n' +
        'Could not resume request: Operation not supported\n',
    );
  });
});
