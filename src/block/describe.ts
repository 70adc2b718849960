/**
 * Describing an open graph as options again: one nested definition (for `json:` filenames) or
 * a list of flat `--blockdev` definitions that reference each other by node name. Implicit
 * nodes are skipped, so what users did not ask for does not show.
 */
import type { OptionTree } from '../options/types.js';
import { toJsonFilename } from '../options/json.js';
import type { BlockNode } from './node.js';
import { ROLE_COW } from './driver.js';

/** Skip implicit filters: the node a user would name instead. */
export function visibleNode(node: BlockNode): BlockNode {
  let n = node;
  while (n.implicit && n.filteredChild) n = n.filteredChild.node;
  return n;
}

/** Options every node takes, stated after the driver's own in this order, so reprinting is stable. */
const GENERIC_KEYS = ['read-only', 'auto-read-only', 'force-share', 'cache.direct', 'cache.no-flush', 'discard', 'detect-zeroes'];
/** Generic options stated from the node's state (in `state`), not from what was given. */
const STATE_KEYS = ['read-only', 'force-share'];

/**
 * The node's options: driver, `name`, the driver's options, then the generic ones; `state`
 * says which read-only and force-share values the definition must state where it is used.
 */
function ownOptions(node: BlockNode, state: OptionTree, name = node.autoNamed ? undefined : node.nodeName): OptionTree {
  const out: OptionTree = { driver: node.driver.name };
  if (name !== undefined) out['node-name'] = name;
  for (const [k, v] of Object.entries(node.openOptions)) if (v !== undefined && k !== 'driver' && !GENERIC_KEYS.includes(k)) out[k] = v;
  for (const k of GENERIC_KEYS) {
    const v = STATE_KEYS.includes(k) ? state[k] : node.openOptions[k];
    if (v !== undefined) out[k] = v;
  }
  return out;
}

/** What a child in `role` inherits from `parent`: read-only (always for backing files) and force-share. */
function inheritedState(parent: BlockNode, role: number): { readOnly: boolean; forceShare: boolean } {
  return { readOnly: role & ROLE_COW ? true : parent.readOnly, forceShare: parent.forceShare };
}

/**
 * The whole subgraph below `node` as one nested definition (children inline). The top states
 * whether it is read-only (so that `-r` can open it with writable nodes, as QEMU's test 216
 * does); a child states read-only or force-share only where it does not inherit them.
 */
export function nestedDefinition(node: BlockNode, inherited?: { readOnly: boolean; forceShare: boolean }): OptionTree {
  const n = visibleNode(node);
  const state: OptionTree = {};
  if (n.readOnly !== inherited?.readOnly) state['read-only'] = n.readOnly;
  if (n.forceShare !== (inherited?.forceShare ?? false)) state['force-share'] = n.forceShare;
  const def = ownOptions(n, state);
  for (const edge of n.children) setPath(def, edge.name, nestedDefinition(edge.node, inheritedState(n, edge.role)));
  return def;
}

/** `json:{...}` for a graph, in QEMU's spacing. */
export function jsonFilename(node: BlockNode): string {
  return toJsonFilename(nestedDefinition(node));
}

/**
 * Flat definitions, children before parents, each child referenced by node name, so that
 * `--blockdev` in this order reopens the same graph. Generated names become explicit ones.
 */
export function blockdevDefinitions(root: BlockNode): OptionTree[] {
  const out: OptionTree[] = [];
  const seen = new Set<BlockNode>();
  const visit = (node: BlockNode): void => {
    const n = visibleNode(node);
    if (seen.has(n)) return;
    seen.add(n);
    // Each definition opens a root, which inherits nothing: state what the node inherited.
    const state: OptionTree = {};
    if (n.readOnly) state['read-only'] = true;
    if (n.forceShare) state['force-share'] = true;
    const def = ownOptions(n, state, n.nodeName.replace(/^#/, 'node-'));
    for (const edge of n.children) {
      visit(edge.node);
      setPath(def, edge.name, visibleNode(edge.node).nodeName.replace(/^#/, 'node-'));
    }
    out.push(def);
  };
  visit(root);
  return out;
}

/** Set `children.0` style paths: numeric parts make arrays. */
function setPath(tree: OptionTree, path: string, value: OptionTree | string): void {
  const parts = path.split('.');
  let cur: any = tree;
  for (let i = 0; i < parts.length - 1; i++) {
    const nextIsIndex = /^\d+$/.test(parts[i + 1]!);
    cur[parts[i]!] ??= nextIsIndex ? [] : {};
    cur = cur[parts[i]!];
  }
  cur[parts[parts.length - 1]!] = value;
}
