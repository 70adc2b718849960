import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { renderGraph } from '../../../src/cli/graph.js';
import { openBlockdevs, openDrives } from '../../../src/cli/open-graph.js';

const dir = mkdtempSync(join(tmpdir(), 'blkio-graph-print-'));
const image = join(dir, 'disk.raw');
writeFileSync(image, Buffer.alloc(65536));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const CHAIN = [`file,node-name=f,filename=${image}`, 'raw,node-name=r,file=f', 'copy-on-read,node-name=c,file=r'];

/** A fresh layer, closed (and its file locks released) after `body`, whatever happens. */
async function withLayer(body: (layer: BlockLayer) => Promise<void>): Promise<void> {
  const layer = new BlockLayer(allDrivers);
  try {
    await body(layer);
  } finally {
    await layer.closeAll();
  }
}

describe('blkio graph tree', () => {
  it('prints the root user, then each edge with the node it reaches and what it takes and shares', () =>
    withLayer(async (layer) => {
      const top = await openBlockdevs(layer, CHAIN);
      const blk = BlockBackend.attach(top, PERM_CONSISTENT_READ, PERM_ALL);
      expect(renderGraph(layer, blk.root)).toEqual([
        'an unnamed block device (root user): takes consistent read; shares all',
        '└── root: c (copy-on-read)',
        '    └── file: r (raw)',
        '        │   filtered, primary; takes consistent read, write unchanged; shares all',
        `        └── file: f (file, ${image})`,
        '                filtered, primary; takes consistent read, write unchanged; shares all',
      ]);
    }));

  it('names a node reached twice without repeating its subtree, and lists nodes nobody uses', () =>
    withLayer(async (layer) => {
      await openBlockdevs(layer, [...CHAIN, 'quorum,node-name=q,vote-threshold=1,children.0=f,children.1=r', 'null-co,node-name=spare']);
      const blk = BlockBackend.attach(layer.findNodeOrThrow('r'), PERM_CONSISTENT_READ, PERM_ALL);
      expect(renderGraph(layer, blk.root)).toEqual([
        'an unnamed block device (root user): takes consistent read; shares all',
        '└── root: r (raw)',
        `    └── file: f (file, ${image})`,
        // c, though nobody uses it, still asks r for unchanged writes; q shares little.
        '            filtered, primary; takes consistent read, write unchanged; shares consistent read, write unchanged',
        'c (copy-on-read): not in use',
        '└── file: r (raw), see above',
        '        filtered, primary; takes write unchanged; shares all',
        'q (quorum): not in use',
        `├── children.0: f (file, ${image}), see above`,
        '│       data; takes nothing; shares consistent read, write unchanged',
        '└── children.1: r (raw), see above',
        '        data; takes nothing; shares consistent read, write unchanged',
        'spare (null-co, null-co://): not in use',
      ]);
    }));

  it('shows every drive, the selected one first, hides implicit nodes and prints generated names', () =>
    withLayer(async (layer) => {
      const drives = await openDrives(layer, [`file=${image},format=raw,node-name=n,copy-on-read=on`, `file=${image},format=raw,id=other,read-only=on`]);
      expect(renderGraph(layer, drives[1]!.blk.root)).toEqual([
        "block device 'other' (root user): takes consistent read; shares all",
        '└── root: #block004 (raw, read-only)',
        `    └── file: #block003 (file, read-only, ${image})`,
        '            filtered, primary; takes consistent read; shares all',
        "block device 'none0' (root user): takes consistent read, write; shares all",
        '└── root: n (raw)',
        // The edge that reaches n is the hidden copy-on-read node's.
        '    │   filtered, primary; takes consistent read, write, write unchanged; shares all',
        `    └── file: #block001 (file, ${image})`,
        '            filtered, primary; takes consistent read, write, write unchanged; shares all',
      ]);
    }));

  it('says when an edge takes nothing', () =>
    withLayer(async (layer) => {
      const top = await openBlockdevs(layer, CHAIN.slice(0, 2));
      const blk = BlockBackend.attach(top, 0, PERM_ALL & ~PERM_WRITE);
      expect(renderGraph(layer, blk.root)).toEqual([
        'an unnamed block device (root user): takes nothing; shares consistent read, write unchanged, resize',
        '└── root: r (raw)',
        `    └── file: f (file, ${image})`,
        '            filtered, primary; takes nothing; shares consistent read, write unchanged, resize',
      ]);
    }));
});
