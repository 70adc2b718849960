/**
 * `blkio graph`: open a graph the way `blkio io` would and print it — as a tree with node
 * names, drivers, roles and the permissions each edge takes and shares, or with
 * `--output=json` as `--blockdev` definitions (children first) plus a `json:` filename,
 * either of which reopens the same graph.
 */
import { parseArgs } from 'node:util';
import { BlkioError } from '../errors.js';
import { BlockBackend } from '../block/backend.js';
import { blockdevDefinitions, jsonFilename, visibleNode } from '../block/describe.js';
import { ROLE_COW, ROLE_DATA, ROLE_FILTERED, ROLE_METADATA, ROLE_PRIMARY } from '../block/driver.js';
import { BlockLayer } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE, permNames } from '../block/permissions.js';
import { allDrivers } from '../drivers/index.js';
import { openBlockdevs, openDrives } from './open-graph.js';
import { openImage } from './open-image.js';

const USAGE = 'Usage: blkio graph [-f FMT] [--image-opts] [-r] [-C] [-U] [--blockdev DEF]... [--drive STR]... [--node NAME] [--output=human|json] [IMAGE]';

function perms(perm: number): string {
  return perm === PERM_ALL ? 'all' : permNames(perm) || 'none';
}

const ROLE_NAMES: Array<[number, string]> = [
  [ROLE_DATA, 'data'], [ROLE_METADATA, 'metadata'], [ROLE_FILTERED, 'filtered'], [ROLE_COW, 'cow'], [ROLE_PRIMARY, 'primary'],
];

/** What a child holds for its parent (QEMU's BDRV_CHILD_* roles). */
function roleNames(role: number): string {
  return ROLE_NAMES.filter(([bit]) => role & bit).map(([, name]) => name).join(', ');
}

/** The tree below `node`, one line per edge, with box-drawing indentation. */
export function renderTree(node: BlockNode, indent = '', lines: string[] = []): string[] {
  const children = node.children;
  children.forEach((edge, i) => {
    const last = i === children.length - 1;
    const child = visibleNode(edge.node);
    lines.push(
      `${indent}${last ? '└── ' : '├── '}${edge.name} [${roleNames(edge.role)}]: ${child.nodeName} (${child.driver.name}${child.readOnly ? ', read-only' : ''})` +
        `  takes: ${perms(edge.perm)}; shares: ${perms(edge.shared)}`,
    );
    renderTree(child, indent + (last ? '    ' : '│   '), lines);
  });
  return lines;
}

export async function runGraph(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        format: { type: 'string', short: 'f' },
        'image-opts': { type: 'boolean' },
        'read-only': { type: 'boolean', short: 'r' },
        'copy-on-read': { type: 'boolean', short: 'C' },
        'force-share': { type: 'boolean', short: 'U' },
        blockdev: { type: 'string', multiple: true },
        drive: { type: 'string', multiple: true },
        node: { type: 'string' },
        output: { type: 'string', default: 'human' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    throw new BlkioError('EINVAL', `${(e as Error).message}\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  if (values.output !== 'human' && values.output !== 'json') {
    throw new BlkioError('EINVAL', `--output must be human or json, not '${values.output}'`);
  }
  if (positionals.length > 1) throw new BlkioError('EINVAL', USAGE);

  // Warnings as the other subcommands print them: `blkio: warning: ...`; the probing notice as is.
  const layer = new BlockLayer(allDrivers, (text) => process.stderr.write(`${text.startsWith('WARNING:') ? '' : 'blkio: '}${text}\n`));
  try {
    let blk: BlockBackend;
    if (values.blockdev?.length) {
      const node = await openBlockdevs(layer, values.blockdev, values.node);
      const perm = PERM_CONSISTENT_READ | (values['read-only'] ? 0 : PERM_WRITE);
      blk = BlockBackend.attach(node, perm, PERM_ALL);
    } else if (values.drive?.length) {
      blk = (await openDrives(layer, values.drive, values['read-only'])).blk;
    } else {
      if (positionals[0] === undefined) throw new BlkioError('EINVAL', USAGE);
      blk = (await openImage(layer, {
        filename: positionals[0],
        format: values.format,
        imageOpts: values['image-opts'],
        readOnly: values['read-only'],
        copyOnRead: values['copy-on-read'],
        forceShare: values['force-share'],
      })).blk;
    }
    const root = visibleNode(blk.node);
    if (values.output === 'json') {
      const out = { blockdev: blockdevDefinitions(root), json: jsonFilename(root) };
      process.stdout.write(JSON.stringify(out, null, 4) + '\n');
    } else {
      process.stdout.write(
        `${blk.describe()} (root user)  takes: ${perms(blk.root.perm)}; shares: ${perms(blk.root.shared)}\n` +
          `└── ${root.nodeName} (${root.driver.name}${root.readOnly ? ', read-only' : ''})\n` +
          renderTree(root, '    ').map((l) => l + '\n').join(''),
      );
    }
    blk.detach();
    return 0;
  } finally {
    await layer.closeAll();
  }
}
