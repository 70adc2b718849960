import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { qcow2Driver } from '../../../src/drivers/qcow2/index.js';
import type { FlatOptions } from '../../../src/options/types.js';
import { createImage } from '../drivers/image-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'blkio-graph-'));
const image = join(dir, 'disk.raw');
writeFileSync(image, Buffer.alloc(65536, 0x5a));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function newLayer(warnings: string[] = []): BlockLayer {
  return new BlockLayer(allDrivers, (text) => warnings.push(text));
}

async function openError(options: FlatOptions, filename?: string): Promise<string> {
  const layer = newLayer();
  try {
    await layer.openNode(filename, options);
  } catch (e) {
    expect(layer.nodes.size).toBe(0); // a failed open leaves nothing behind
    return (e as Error).message;
  }
  throw new Error('expected the open to fail');
}

describe('children by role', () => {
  it('opens the file child of a format first, as a protocol, and names it', async () => {
    const layer = newLayer();
    const raw = await layer.openNode(undefined, { driver: 'raw', 'node-name': 'r', 'file.filename': image });
    expect(raw.file?.node.driver.name).toBe('file');
    expect(raw.file?.node.autoNamed).toBe(true);
    expect([...layer.nodes.keys()].sort()).toEqual([raw.file!.node.nodeName, 'r'].sort());
  });

  it('gives a filter its file child without probing', async () => {
    const layer = newLayer();
    const cor = await layer.openNode(undefined, { driver: 'copy-on-read', 'file.filename': image });
    expect(cor.file?.node.driver.name).toBe('file');
  });

  it('probes the format when no driver is named, and warns for a writable raw', async () => {
    const warnings: string[] = [];
    const node = await newLayer(warnings).openNode(image, {});
    expect(node.driver.name).toBe('raw');
    expect(node.probed).toBe(true);
    expect(warnings[0]).toMatch(/^WARNING: Image format was not specified for '.*disk.raw' and probing guessed raw/);
    const quiet: string[] = [];
    await newLayer(quiet).openNode(image, { 'read-only': 'on' });
    expect(quiet).toEqual([]);
  });

  it('resolves protocol prefixes, and refuses unknown ones', async () => {
    expect((await newLayer().openNode('null-co://', { driver: 'raw' })).file?.node.driver.name).toBe('null-co');
    expect(await openError({ driver: 'raw' }, 'foo:bar')).toBe("Unknown protocol 'foo'");
    expect(await openError({ driver: 'null-co' }, 'x')).toBe("The only allowed filename for this driver is 'null-co://'");
  });
});

describe('inheritance', () => {
  it('passes read-only and cache options down to children that do not set them', async () => {
    const layer = newLayer();
    const raw = await layer.openNode(undefined, { driver: 'raw', 'read-only': 'on', 'file.filename': image });
    expect(raw.file?.node.readOnly).toBe(true);
    const mixed = await layer.openNode(undefined, { driver: 'raw', 'read-only': 'on', 'file.read-only': 'off', 'file.filename': image });
    expect(mixed.readOnly).toBe(true);
    expect(mixed.file?.node.readOnly).toBe(false);
  });

  it('lets a child reject an inherited bad value before its parent checks it', async () => {
    expect(await openError({ driver: 'raw', 'read-only': 'maybe', 'file.filename': join(dir, 'nope') }))
      .toBe("Parameter 'read-only' expects 'on' or 'off'");
    expect(await openError({ driver: 'raw', 'node-name': '1x', 'file.filename': join(dir, 'nope') }))
      .toMatch(/^Could not open '.*nope': No such file or directory$/);
  });
});

describe('references and node names', () => {
  it('attaches an existing node named by the child option', async () => {
    const layer = newLayer();
    const file = await layer.openNode(undefined, { driver: 'file', filename: image, 'node-name': 'f' });
    const raw = await layer.openNode(undefined, { driver: 'raw', file: 'f' });
    expect(raw.file?.node).toBe(file);
  });

  it('words dangling references and references with options as QEMU does', async () => {
    expect(await openError({ driver: 'raw', file: 'nodefoo' })).toBe("Cannot find device='nodefoo' nor node-name='nodefoo'");
    expect(await openError({ driver: 'raw', file: 'f', 'file.filename': image }))
      .toBe('Cannot reference an existing block device with additional options or a new filename');
    expect(await openError({ driver: 'raw' })).toBe('A block device must be specified for "file"');
  });

  it('refuses a child that would make a cycle, naming it without the backing-file prefix', async () => {
    expect(await openError({ driver: 'quorum', 'node-name': 'q', 'vote-threshold': 1, 'children.0': 'q' }))
      .toBe("Making 'q' a children.0 child of 'q' would create a cycle");
    expect(await openError({ driver: 'blkdebug', 'node-name': 'q', image: 'q' })).toBe("Making 'q' a image child of 'q' would create a cycle");
  });

  it('checks node names: syntax, duplicates (the child is named first), length', async () => {
    expect(await openError({ driver: 'raw', 'node-name': '1x', 'file.filename': image })).toBe("Invalid node-name: '1x'");
    expect(await openError({ driver: 'raw', 'node-name': 'a', 'file.node-name': 'a', 'file.filename': image }))
      .toBe("Duplicate nodes with node-name='a'");
    expect(await openError({ driver: 'raw', 'node-name': 'a'.repeat(32), 'file.filename': image })).toBe('Node name too long');
    expect(await openError({ driver: 'raw', 'node-name': 5, 'file.filename': image })).toBe("Invalid node-name: '5'");
  });

  it('gives unnamed nodes generated names', async () => {
    const layer = newLayer();
    const a = await layer.openNode(undefined, { driver: 'null-co' });
    const b = await layer.openNode(undefined, { driver: 'null-co' });
    expect(a.nodeName).toMatch(/^#block\d{3}$/);
    expect(b.nodeName).not.toBe(a.nodeName);
  });
});

describe('leftover options', () => {
  it('names the first unsupported option in QDict order', async () => {
    const base = { driver: 'raw', 'file.filename': image };
    expect(await openError({ ...base, bar: '1', baz: '2' })).toBe("Block format 'raw' does not support the option 'bar'");
    expect(await openError({ ...base, baz: '1', bar: '2' })).toBe("Block format 'raw' does not support the option 'baz'");
    expect(await openError({ ...base, foo: '1', bar: '2', baz: '3' })).toBe("Block format 'raw' does not support the option 'bar'");
    expect(await openError({ ...base, 'file.baz': '1', 'file.bar': '2' })).toBe("Block protocol 'file' doesn't support the option 'baz'");
  });

  it('follows json: filenames, whose keys QEMU copies one time less', async () => {
    const json = (members: string) => `json:{"driver": "raw", "file.filename": "${image}", ${members}}`;
    expect(await openError({}, json('"bar": 1, "baz": 2'))).toBe("Block format 'raw' does not support the option 'baz'");
    expect(await openError({}, json('"baz": 1, "bar": 2'))).toBe("Block format 'raw' does not support the option 'bar'");
  });

  it('drops null values of known options but not lists', async () => {
    const layer = newLayer();
    await expect(layer.openNode(undefined, { driver: 'raw', offset: null, 'file.filename': image })).resolves.toBeDefined();
    expect(await openError({}, `json:{"driver": "raw", "offset": [1], "file.filename": "${image}"}`))
      .toBe("Block format 'raw' does not support the option 'offset.0'");
  });

  it('refuses backing options on drivers without backing files', async () => {
    expect(await openError({ driver: 'raw', backing: 'x', 'file.filename': image })).toBe("Driver doesn't support backing files");
    const warnings: string[] = [];
    await newLayer(warnings).openNode(undefined, { driver: 'raw', backing: '', 'file.filename': image });
    expect(warnings).toEqual(['warning: Use of "backing": "" is deprecated; use "backing": null instead']);
  });
});

describe('generic options', () => {
  it('checks values in QEMU wording', async () => {
    const base = { driver: 'raw', 'file.filename': image };
    expect(await openError({ ...base, discard: 'maybe' })).toBe('Invalid discard option');
    expect(await openError({ ...base, 'detect-zeroes': 'maybe' })).toBe('invalid parameter value: maybe');
    expect(await openError({ ...base, 'detect-zeroes': 'unmap', discard: 'off' }))
      .toBe('setting detect-zeroes to unmap is not allowed without setting discard operation to unmap');
    expect(await openError({ ...base, 'force-share': 'on' })).toBe('force-share=on can only be used with read-only images');
    expect(await openError({ ...base, 'file.aio': 'maybe' })).toBe('invalid parameter value: maybe');
  });
});

describe('permissions', () => {
  it('refuses a writing user on a read-only node', async () => {
    const layer = newLayer();
    const node = await layer.openNode(undefined, { driver: 'raw', 'file.read-only': 'on', 'file.filename': image });
    expect(() => BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE)).toThrow('Block node is read-only');
    expect(() => BlockBackend.attach(node, PERM_CONSISTENT_READ)).not.toThrow();
  });

  it('takes consistent reads of a format\'s metadata unless that node opened without I/O', async () => {
    const qcow2 = join(dir, 'perm.qcow2');
    await createImage(qcow2Driver, qcow2, 65536);
    const layer = newLayer();
    const flags = { protocol: false, inherited: { 'read-only': 'on' }, withoutIo: true };
    const described = await layer.openNode(qcow2, { driver: 'qcow2' }, flags);
    expect(described.file!.perm & PERM_CONSISTENT_READ).toBe(0);
    // The file child a format opens first is not opened without I/O, as in QEMU.
    const below = await layer.openNode(qcow2, { driver: 'raw', 'file.driver': 'qcow2', 'file.force-share': 'on' }, flags);
    expect(below.withoutIo).toBe(true);
    expect(below.file!.node.withoutIo).toBe(false);
    expect(below.file!.node.file!.perm & PERM_CONSISTENT_READ).toBe(PERM_CONSISTENT_READ);
    await layer.closeAll();
  });

  it('refuses a copy-on-read filter over a read-only child', async () => {
    expect(await openError({ driver: 'copy-on-read', 'file.driver': 'raw', 'file.read-only': 'on', 'file.file.filename': image }))
      .toBe('Block node is read-only');
  });
});
