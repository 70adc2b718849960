/**
 * `blkio graph`: open a graph the way `blkio io` would and print it — as a tree of nodes with
 * their drivers and, for every edge, the child's roles and the permissions the parent takes
 * and shares; or with `--output=json` as `--blockdev` definitions (children first) plus a
 * `json:` filename, either of which reopens the same graph.
 *
 * Generated node names (`#block001`) are printed as they are: they follow the open order,
 * which is fixed for a given command line. Implicit nodes (the copy-on-read filter of `-C` or
 * `copy-on-read=on`) are not shown.
 */
import { BlkioError } from '../errors.js';
import type { BdrvChild } from '../block/child.js';
import { blockdevDefinitions, jsonFilename, visibleNode } from '../block/describe.js';
import { ROLE_COW, ROLE_DATA, ROLE_FILTERED, ROLE_METADATA, ROLE_PRIMARY } from '../block/driver.js';
import { BlockLayer } from '../block/graph.js';
import { BlockNode } from '../block/node.js';
import { PERM_ALL, permNames } from '../block/permissions.js';
import { getopt, type GetoptSpec } from '../commands/io/getopt.js';
import { allDrivers } from '../drivers/index.js';
import { graphImage, openGraph } from './open-graph.js';
import { openImage, type OpenedImage } from './open-image.js';
import { writeStderr, writeStdout } from './output.js';
import { PROGRAM } from './run.js';

const USAGE = `Usage: ${PROGRAM} graph [-f FMT] [--image-opts] [-r] [-C] [-U] [--blockdev DEF]... [--drive STR]... [--node NAME] [--output=human|json] [IMAGE]`;

const OPTIONS: GetoptSpec = {
  short: 'f:rCUh',
  long: [
    { name: 'format', hasArg: true, key: 'f' },
    { name: 'image-opts', hasArg: false, key: 'image-opts' },
    { name: 'read-only', hasArg: false, key: 'r' },
    { name: 'copy-on-read', hasArg: false, key: 'C' },
    { name: 'force-share', hasArg: false, key: 'U' },
    { name: 'blockdev', hasArg: true, key: 'blockdev' },
    { name: 'drive', hasArg: true, key: 'drive' },
    { name: 'node', hasArg: true, key: 'node' },
    { name: 'output', hasArg: true, key: 'output' },
    { name: 'help', hasArg: false, key: 'h' },
  ],
  singleDashLong: ['drive'],
};

interface GraphOptions {
  format?: string;
  imageOpts: boolean;
  readOnly: boolean;
  copyOnRead: boolean;
  forceShare: boolean;
  blockdevs: string[];
  drives: string[];
  node?: string;
  output: string;
  help: boolean;
  operands: string[];
}

/** A command line error: the message, then the usage line. */
function usageError(message: string): BlkioError {
  return new BlkioError('EINVAL', `${message}\n${USAGE}`);
}

function parseOptions(argv: string[]): GraphOptions {
  const opts: GraphOptions = {
    imageOpts: false, readOnly: false, copyOnRead: false, forceShare: false, blockdevs: [], drives: [], output: 'human', help: false, operands: [],
  };
  const { items, operands } = getopt([PROGRAM, ...argv], OPTIONS);
  for (const item of items) {
    if (item.kind === 'error') throw usageError(item.message.replace(/^[^:]*: /, ''));
    switch (item.key) {
      case 'f': opts.format = item.value; break;
      case 'image-opts': opts.imageOpts = true; break;
      case 'r': opts.readOnly = true; break;
      case 'C': opts.copyOnRead = true; break;
      case 'U': opts.forceShare = true; break;
      case 'blockdev': opts.blockdevs.push(item.value); break;
      case 'drive': opts.drives.push(item.value); break;
      case 'node': opts.node = item.value; break;
      case 'output': opts.output = item.value; break;
      case 'h': opts.help = true; break;
    }
  }
  opts.operands = operands;
  return opts;
}

function perms(perm: number): string {
  return perm === PERM_ALL ? 'all' : permNames(perm) || 'nothing';
}

const ROLE_NAMES: Array<[number, string]> = [
  [ROLE_DATA, 'data'], [ROLE_METADATA, 'metadata'], [ROLE_FILTERED, 'filtered'], [ROLE_COW, 'cow'], [ROLE_PRIMARY, 'primary'],
];

/** What a child holds for its parent (QEMU's BDRV_CHILD_* roles). */
function roleNames(role: number): string {
  return ROLE_NAMES.filter(([bit]) => role & bit).map(([, name]) => name).join(', ');
}

/** `name (driver, read-only, filename)`: what a node is. */
function nodeLabel(node: BlockNode): string {
  const facts = [node.driver.name];
  if (node.readOnly) facts.push('read-only');
  if (node.driver.kind === 'protocol' && node.filename) facts.push(node.filename);
  return `${node.nodeName} (${facts.join(', ')})`;
}

/** What an edge is for and what its parent takes and shares. */
function edgeLabel(edge: BdrvChild): string {
  const role = roleNames(edge.role);
  return `${role ? `${role}; ` : ''}takes ${perms(edge.perm)}; shares ${perms(edge.shared)}`;
}

/** The edge that reaches a visible node, skipping the implicit filters in between. */
function visibleEdge(edge: BdrvChild): BdrvChild {
  let e = edge;
  while (e.node.implicit && e.node.filteredChild) e = e.node.filteredChild;
  return e;
}

/**
 * The tree below `node`: for every child, a line naming the edge and the node, then a line
 * with the edge's roles and permissions. A node reached a second time (shared by two parents)
 * is named again but its subtree is not repeated.
 */
export function renderTree(node: BlockNode, indent: string, shown: Set<BlockNode>, lines: string[] = []): string[] {
  shown.add(node);
  const children = node.children;
  children.forEach((child, i) => {
    const last = i === children.length - 1;
    const edge = visibleEdge(child);
    const repeated = shown.has(edge.node);
    const below = indent + (last ? '    ' : '│   ');
    lines.push(`${indent}${last ? '└── ' : '├── '}${child.name}: ${nodeLabel(edge.node)}${repeated ? ', see above' : ''}`);
    lines.push(`${below}${!repeated && edge.node.children.length > 0 ? '│' : ' '}   ${edgeLabel(edge)}`);
    if (!repeated) renderTree(edge.node, below, shown, lines);
  });
  return lines;
}

/**
 * The whole graph: the root user the commands would act on, then the other root users
 * (drives), then nodes nobody uses, each with the tree below it.
 */
export function renderGraph(layer: BlockLayer, user: BdrvChild): string[] {
  const users = [user];
  const unused: BlockNode[] = [];
  for (const node of layer.nodes.values()) {
    if (node.parents.length === 0 && !node.implicit) unused.push(node);
    for (const edge of node.parents) if (!(edge.parent instanceof BlockNode) && !users.includes(edge)) users.push(edge);
  }
  const shown = new Set<BlockNode>();
  const lines: string[] = [];
  for (const root of users) {
    const edge = visibleEdge(root);
    lines.push(`${root.parent.describe()} (root user): takes ${perms(root.perm)}; shares ${perms(root.shared)}`);
    lines.push(`└── ${root.name}: ${nodeLabel(edge.node)}${shown.has(edge.node) ? ', see above' : ''}`);
    if (shown.has(edge.node)) continue;
    if (edge !== root) lines.push(`    ${edge.node.children.length > 0 ? '│' : ' '}   ${edgeLabel(edge)}`);
    renderTree(edge.node, '    ', shown, lines);
  }
  for (const node of unused) {
    if (shown.has(node)) continue;
    lines.push(`${nodeLabel(node)}: not in use`);
    renderTree(node, '', shown, lines);
  }
  return lines;
}

async function openRequested(layer: BlockLayer, opts: GraphOptions): Promise<OpenedImage> {
  if (opts.blockdevs.length > 0 || opts.drives.length > 0) {
    if (opts.operands.length > 0) throw usageError('An image file name cannot be combined with --blockdev or --drive');
    const defs = { ...opts, readOnly: opts.readOnly };
    return graphImage(layer, await openGraph(layer, defs), defs);
  }
  if (opts.operands.length !== 1) throw usageError('Expecting one image file name');
  if (opts.format !== undefined && opts.imageOpts) throw new BlkioError('EINVAL', '--image-opts and -f are mutually exclusive');
  return openImage(layer, {
    filename: opts.operands[0],
    format: opts.format,
    imageOpts: opts.imageOpts,
    readOnly: opts.readOnly,
    copyOnRead: opts.copyOnRead,
    forceShare: opts.forceShare,
  });
}

export async function runGraph(argv: string[]): Promise<number> {
  const opts = parseOptions(argv);
  if (opts.help) {
    writeStdout(USAGE + '\n');
    return 0;
  }
  if (opts.output !== 'human' && opts.output !== 'json') {
    throw new BlkioError('EINVAL', `--output must be human or json, not '${opts.output}'`);
  }
  // Warnings as the other subcommands print them: `blkio: warning: ...`; the probing notice as is.
  const layer = new BlockLayer(allDrivers, (text) => writeStderr(`${text.startsWith('WARNING:') ? '' : `${PROGRAM}: `}${text}\n`));
  try {
    const { blk } = await openRequested(layer, opts);
    if (opts.output === 'json') {
      const root = visibleNode(blk.node);
      const out = { blockdev: blockdevDefinitions(root), json: jsonFilename(root) };
      writeStdout(JSON.stringify(out, null, 4) + '\n');
    } else {
      writeStdout(renderGraph(layer, blk.root).map((l) => l + '\n').join(''));
    }
    return 0;
  } finally {
    await layer.closeAll();
  }
}
