import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockLayer } from '../../../src/block/graph.js';
import { blockdevDefinitions, jsonFilename, nestedDefinition } from '../../../src/block/describe.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { flattenTree } from '../../../src/options/json.js';
import type { OptionTree } from '../../../src/options/types.js';

const dir = mkdtempSync(join(tmpdir(), 'blkio-describe-'));
const image = join(dir, 'disk.raw');
writeFileSync(image, Buffer.alloc(1 << 20));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const FIVE_NODES: OptionTree[] = [
  { driver: 'file', 'node-name': 'f', filename: image },
  { driver: 'raw', 'node-name': 'r1', file: 'f', offset: 4096, size: 65536 },
  { driver: 'copy-on-read', 'node-name': 'c1', file: 'r1' },
  { driver: 'raw', 'node-name': 'r2', file: 'c1' },
  { driver: 'copy-on-read', 'node-name': 'c2', file: 'r2' },
];

async function openAll(defs: OptionTree[]) {
  const layer = new BlockLayer(allDrivers);
  let last;
  for (const def of defs) last = await layer.openNode(undefined, flattenTree(def));
  return { layer, root: last! };
}

describe('graph description', () => {
  it('round-trips --blockdev definitions: parse, open, print, reopen, print', async () => {
    const first = await openAll(FIVE_NODES);
    const printed = blockdevDefinitions(first.root);
    expect(printed).toEqual([
      { driver: 'file', 'node-name': 'f', filename: image },
      { driver: 'raw', 'node-name': 'r1', offset: 4096, size: 65536, file: 'f' },
      { driver: 'copy-on-read', 'node-name': 'c1', file: 'r1' },
      { driver: 'raw', 'node-name': 'r2', file: 'c1' },
      { driver: 'copy-on-read', 'node-name': 'c2', file: 'r2' },
    ]);
    const second = await openAll(printed);
    expect(blockdevDefinitions(second.root)).toEqual(printed);
    await first.layer.closeAll();
    await second.layer.closeAll();
  });

  it('prints one nested json: filename that reopens the same graph', async () => {
    const { layer, root } = await openAll(FIVE_NODES);
    const json = jsonFilename(root);
    expect(json).toMatch(/^json:\{.*"driver": "copy-on-read"/);
    const expected = nestedDefinition(root);
    await layer.closeAll();
    const again = new BlockLayer(allDrivers);
    const reopened = await again.openNode(json, {});
    expect(nestedDefinition(reopened)).toEqual(expected);
    await again.closeAll();
  });

  it('hides implicit nodes', async () => {
    const { layer, root } = await openAll(FIVE_NODES.slice(0, 2));
    const filter = await layer.insertFilterAbove(root, { driver: 'copy-on-read' }, true);
    expect(filter.implicit).toBe(true);
    expect(blockdevDefinitions(filter).map((d) => d['node-name'])).toEqual(['f', 'r1']);
    expect(layer.visibleNodes().map((n) => n.nodeName)).not.toContain(filter.nodeName);
    await layer.closeAll();
  });
});
