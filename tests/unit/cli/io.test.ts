import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runDirect, runIo } from '../../../src/cli/io.js';

let out = '';
// Stdout as is, stderr lines marked with `E: `, in the order they were written.
vi.mock('../../../src/cli/output.js', () => {
  const capture = (prefix: string) => (text: string) => {
    out += text.replace(/^(?=.)/gm, prefix);
  };
  return { writeStdout: capture(''), writeStderr: capture('E: ') };
});
beforeEach(() => {
  out = '';
});

const masked = () => out.replace(/ops; [^\n]*/g, 'ops; TIME');

describe('blkio io program options', () => {
  it('prints its version and help', async () => {
    expect(await runIo(['-V'])).toBe(0);
    expect(out).toBe('blkio io version 0.1.0\n');
    out = '';
    expect(await runIo(['--help'])).toBe(0);
    expect(out.split('\n')[0]).toBe('Usage: blkio io [OPTIONS]... [-c STRING]... [file]');
  });

  it('answers a bad option with the getopt message and the usage, exit 1', async () => {
    expect(await runIo(['-Z'])).toBe(1);
    expect(out.split('\n').slice(0, 2)).toEqual(["E: blkio: invalid option -- 'Z'", 'Usage: blkio io [OPTIONS]... [-c STRING]... [file]']);
  });

  it('refuses two images, --image-opts with -f, and bad modes', async () => {
    expect(await runIo(['a', 'b'])).toBe(1);
    expect(out.startsWith('Usage: ')).toBe(true);
    out = '';
    expect(await runIo(['--image-opts', '-f', 'raw', 'x'])).toBe(1);
    expect(await runIo(['-t', 'bogus', 'x'])).toBe(1);
    expect(await runIo(['-d', 'bogus'])).toBe(1);
    expect(await runIo(['-i', 'bogus'])).toBe(1);
    expect(out).toBe(
      'E: blkio: --image-opts and -f are mutually exclusive\nE: blkio: Invalid cache option: bogus\n' +
        'E: blkio: Invalid discard option: bogus\nE: blkio: Invalid aio option: bogus\n',
    );
  });

  it('runs -c commands in order; the exit status says whether any failed', async () => {
    expect(await runIo(['-c', 'read -P 0 0 1', '-c', 'read -P 1 0 1', '--image-opts', 'driver=null-co,read-zeroes=on'])).toBe(1);
    expect(masked()).toBe(
      'read 1/1 bytes at offset 0\n1 bytes, 1 ops; TIME\n' +
        'Pattern verification failed at offset 0, 1 bytes\nread 1/1 bytes at offset 0\n1 bytes, 1 ops; TIME\n',
    );
  });

  it('reports a failed open and exits before running commands', async () => {
    expect(await runIo(['-c', 'read 0 1', '--image-opts', 'driver=bogus'])).toBe(1);
    expect(out).toBe("E: blkio: can't open: Unknown driver 'bogus'\n");
  });

  it('opens --blockdev graphs and acts on the selected node', async () => {
    const status = await runIo([
      '--blockdev', 'null-co,node-name=a,size=4096,read-zeroes=on', '--blockdev', 'null-co,node-name=b,size=8192',
      '--node', 'a', '-c', 'length',
    ]);
    expect(status).toBe(0);
    expect(out).toBe('4 KiB\n');
  });
});

describe('direct subcommands', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'blkio-io-test-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('run one command on an image, read-only for reads', async () => {
    const img = join(dir, 'a.raw');
    writeFileSync(img, Buffer.alloc(4096));
    expect(await runDirect('write', ['-f', 'raw', img, '-P', '0x5a', '512', '512'])).toBe(0);
    expect(await runDirect('read', ['-f', 'raw', img, '-P', '0x5a', '512', '512'])).toBe(0);
    expect(await runDirect('read', [img, '-P', '0', '0', '512'])).toBe(0);
    expect(masked()).toBe(
      'wrote 512/512 bytes at offset 512\n512 bytes, 1 ops; TIME\n' +
        'read 512/512 bytes at offset 512\n512 bytes, 1 ops; TIME\n' +
        'read 512/512 bytes at offset 0\n512 bytes, 1 ops; TIME\n',
    );
    expect(readFileSync(img)[512]).toBe(0x5a);
  });

  it('copy on read with -C, opening the image read-write for it', async () => {
    const img = join(dir, 'a.raw');
    writeFileSync(img, Buffer.alloc(4096));
    expect(await runDirect('read', ['-C', '-f', 'raw', img, '-q', '0', '512'])).toBe(0);
    expect(await runDirect('alloc', ['-C', '-f', 'raw', img, '0'])).toBe(0);
    expect(out).toBe('512/512 bytes allocated at offset 0 bytes\n');
  });

  it('needs an image', async () => {
    expect(await runDirect('map', ['-f', 'raw'])).toBe(1);
    expect(out).toBe('E: blkio: an image is required: blkio map [options] IMAGE [map arguments]\n');
  });
});

describe.skipIf(spawnSync('qemu-io', ['--version']).status !== 0)('map and alloc over many extents', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'blkio-io-test-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it("print qemu-io's lines, with block status read many answers at a time across L2 slices", async () => {
    const img = join(dir, 'a.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '1G']);
    // 1500 separate clusters (alternating runs), a zero cluster and a compressed one among them.
    const script = Array.from({ length: 1500 }, (_, i) => `write -q -P 1 ${i * 131072 + 512} 4k\n`).join('')
      + 'write -q -z 300M 64k\nwrite -q -c -P 2 400M 64k\n';
    execFileSync('qemu-io', ['-t', 'writeback', img], { input: script });
    const commands = ['-c', 'map', '-c', 'alloc 0 1G', '-c', 'alloc 1000k 100M'];
    const qemu = execFileSync('qemu-io', ['-r', ...commands, img], { encoding: 'utf8' });
    // Small L2 slices: lists end at the slice end; large ones: at the list's capacity.
    for (const entrySize of ['512', '64k']) {
      out = '';
      expect(await runIo(['-r', ...commands, '--image-opts', `driver=qcow2,file.filename=${img},l2-cache-entry-size=${entrySize}`])).toBe(0);
      expect(out).toBe(qemu);
    }
    expect(qemu.split('\n').length).toBeGreaterThan(3000);
  });
});
