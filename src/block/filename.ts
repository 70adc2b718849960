/**
 * The filename QEMU 7.2 shows for a node (bdrv_refresh_filename), as `qemu-img info` prints it:
 * a plain name when opening that name would rebuild the same node (a protocol's filename, a
 * format over a protocol with no options that change it, `blkdebug:CONFIG:IMAGE`,
 * `blkverify:RAW:TEST`, `null-co://`), else `json:{...}` with the driver, the filename and the
 * options that change what the node shows ("strong" options), children nested by name.
 * Backing children are left out: an image header names them (qemu-img opens without I/O, where
 * QEMU never counts a backing file as overridden).
 */
import { toJsonFilename } from '../options/json.js';
import type { FlatOptions, OptionTree, OptionValue } from '../options/types.js';
import { ROLE_COW } from './driver.js';
import type { BlockNode } from './node.js';

/** QEMU's strong runtime options per driver; a name ending in `.` takes every key under it. */
const STRONG_OPTIONS: Readonly<Record<string, readonly string[]>> = {
  raw: ['offset', 'size'],
  'null-co': ['size', 'read-zeroes'],
  'null-aio': ['size', 'read-zeroes'],
  throttle: ['throttle-group'],
  nbd: ['path', 'host', 'port', 'export', 'tls-creds', 'tls-hostname', 'server.'],
  qcow2: ['encrypt.key-secret'],
  luks: ['key-secret'],
  vpc: ['force_size_calc'],
  quorum: ['vote-threshold', 'blkverify', 'rewrite-corrupted', 'read-pattern'],
  blkdebug: [
    'config', 'inject-error.', 'set-state.', 'align', 'max-transfer', 'opt-write-zero', 'max-write-zero', 'opt-discard',
    'max-discard',
  ],
};

/** What a node contributes to its parents' names: its exact (plain) filename if any, and its options. */
interface NodeName {
  exact: string;
  options: OptionTree;
}

/** The driver, the filename and the strong options the node was given; whether any strong option was. */
function ownOptions(node: BlockNode): { options: OptionTree; strong: boolean } {
  const given: FlatOptions = node.givenOptions;
  const options: OptionTree = { driver: node.driver.name };
  if (given.filename !== undefined && given.filename !== null) options.filename = given.filename;
  let strong = false;
  for (const name of STRONG_OPTIONS[node.driver.name] ?? []) {
    const keys = name.endsWith('.') ? Object.keys(given).filter((k) => k.startsWith(name)) : [name];
    for (const key of keys) {
      if (given[key] === undefined) continue;
      options[key] = given[key]!;
      strong = true;
    }
  }
  return { options, strong };
}

/** A protocol's own plain name, or the plain name a driver builds from its children's. */
function driverExactName(node: BlockNode, options: OptionTree, children: Map<string, NodeName>): string {
  switch (node.driver.name) {
    case 'null-co':
    case 'null-aio':
      // Only the driver and filename: size and read-zeroes would be lost in `null-co://`.
      return Object.keys(options).every((k) => k === 'driver' || k === 'filename') ? `${node.driver.name}://` : '';
    case 'blkdebug': {
      const image = children.get('image')?.exact;
      if (!image || Object.keys(options).some((k) => !['driver', 'config', 'image', 'x-image'].includes(k))) return '';
      return `blkdebug:${node.givenOptions.config ?? ''}:${image}`;
    }
    case 'blkverify': {
      const raw = children.get('raw')?.exact;
      const test = children.get('test')?.exact;
      return raw && test ? `blkverify:${raw}:${test}` : '';
    }
    default:
      return node.driver.kind === 'protocol' ? node.filename : '';
  }
}

function refresh(node: BlockNode): NodeName {
  if (node.implicit && node.children.length === 1) return refresh(node.children[0]!.node);
  const { options, strong } = ownOptions(node);
  const children = new Map<string, NodeName>();
  const list: OptionValue[] = [];
  for (const edge of node.children) {
    if (edge.role & ROLE_COW) continue;
    const child = refresh(edge.node);
    children.set(edge.name, child);
    // quorum gathers its children as one list.
    if (edge.name.startsWith('children.')) list.push(child.options);
    else options[edge.name] = child.options;
  }
  if (list.length > 0) options.children = list;

  let exact = driverExactName(node, options, children);
  const primary = node.primaryChild;
  if (!exact && primary && node.driver.kind === 'format' && !strong) {
    // A format over a protocol reopens from the protocol's name (filters must be asked for).
    const below = children.get(primary.name)!;
    if (below.exact && primary.node.driver.kind === 'protocol') exact = below.exact;
  }
  return { exact, options };
}

/** The node's name as QEMU shows it: the plain filename, else a `json:` one. */
export function qemuFilename(node: BlockNode): string {
  const { exact, options } = refresh(node);
  return exact || toJsonFilename(options);
}
