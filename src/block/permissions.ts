import { BlkioError } from '../errors.js';
import type { BdrvChild } from './child.js';
import type { BlockNode } from './node.js';
import { ROLE_COW, ROLE_DATA, ROLE_METADATA, type PermissionUpdate } from './driver.js';

/**
 * Permissions on graph edges (QEMU's BLK_PERM_*): what a parent uses of a child node and what
 * it lets others do at the same time. WRITE is strictly stronger than WRITE_UNCHANGED.
 */

export const PERM_CONSISTENT_READ = 0x1;
export const PERM_WRITE = 0x2;
export const PERM_WRITE_UNCHANGED = 0x4;
export const PERM_RESIZE = 0x8;
export const PERM_ALL = 0xf;

/** Permissions a filter forwards from its parents to its child unchanged. */
export const PERM_PASSTHROUGH = PERM_CONSISTENT_READ | PERM_WRITE | PERM_WRITE_UNCHANGED | PERM_RESIZE;

const PERM_NAMES: Array<[number, string, string]> = [
  [PERM_CONSISTENT_READ, 'consistent read', 'consistent-read'],
  [PERM_WRITE, 'write', 'write'],
  [PERM_WRITE_UNCHANGED, 'write unchanged', 'write-unchanged'],
  [PERM_RESIZE, 'resize', 'resize'],
];

/** Names joined with ", " in bit order, as QEMU's error messages print them. */
export function permNames(perm: number): string {
  return PERM_NAMES.filter(([bit]) => perm & bit).map(([, name]) => name).join(', ');
}

/** Parse a QAPI permission name; undefined when unknown. */
export function permFromQapiName(name: string): number | undefined {
  return PERM_NAMES.find(([, , qapi]) => qapi === name)?.[0];
}

export interface PermPair {
  perm: number;
  shared: number;
}

// ---------------------------------------------------------------------------------------------
// Permission refresh: recompute every edge below a change, check, then commit all or nothing.


type Tentative = Map<BdrvChild, PermPair>;

function edgePerms(edge: BdrvChild, tentative: Tentative): PermPair {
  return tentative.get(edge) ?? { perm: edge.perm, shared: edge.shared };
}

function cumulative(node: BlockNode, tentative: Tentative): PermPair {
  let perm = 0;
  let shared = PERM_ALL;
  for (const edge of node.parents) {
    const p = edgePerms(edge, tentative);
    perm |= p.perm;
    shared &= p.shared;
  }
  return { perm, shared };
}

/** A filter's child: pass everything through. */
export function filterChildPerms(parents: PermPair): PermPair {
  return { perm: parents.perm & PERM_PASSTHROUGH, shared: (parents.shared & PERM_PASSTHROUGH) | (PERM_ALL & ~PERM_PASSTHROUGH) };
}

/** A backing file is only read; others may write to it only if our parents tolerate changing data. */
export function cowChildPerms(parents: PermPair): PermPair {
  const shared = (parents.shared & PERM_WRITE ? PERM_WRITE | PERM_RESIZE : 0) | PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED;
  return { perm: parents.perm & PERM_CONSISTENT_READ, shared };
}

/** A format's storage: metadata needs consistent reads, writes when writable, and nobody else writing. */
export function storageChildPerms(node: BlockNode, role: number, parents: PermPair): PermPair {
  let { perm, shared } = filterChildPerms(parents);
  if (role & ROLE_METADATA) {
    if (node.isWritable) perm |= PERM_WRITE | PERM_RESIZE;
    if (!node.withoutIo) perm |= PERM_CONSISTENT_READ;
    shared &= ~(PERM_WRITE | PERM_RESIZE);
  }
  if (role & ROLE_DATA) {
    shared &= ~PERM_RESIZE;
    if (perm & PERM_WRITE_UNCHANGED) perm |= PERM_WRITE;
    if (perm & PERM_WRITE) perm |= PERM_RESIZE;
  }
  return { perm, shared };
}

export function defaultChildPerms(node: BlockNode, child: BdrvChild, parents: PermPair): PermPair {
  if (child.role & ROLE_COW) return cowChildPerms(parents);
  if (child.role & (ROLE_DATA | ROLE_METADATA)) return storageChildPerms(node, child.role, parents);
  return filterChildPerms(parents);
}

function computeBelow(node: BlockNode, tentative: Tentative): void {
  const parents = cumulative(node, tentative);
  for (const child of node.children) {
    const p = node.driver.childPerm?.(node, child, parents) ?? defaultChildPerms(node, child, parents);
    if (child.node.forceShare) p.shared = PERM_ALL;
    tentative.set(child, p);
    computeBelow(child.node, tentative);
  }
}

function checkNode(node: BlockNode, tentative: Tentative, updates: PermissionUpdate[], wasWritable: Set<BlockNode>): void {
  // Newest parent first, the order QEMU walks its parent list in.
  const edges = [...node.parents].reverse();
  for (const a of edges) {
    for (const b of edges) {
      if (a === b) continue;
      const pa = edgePerms(a, tentative);
      const pb = edgePerms(b, tentative);
      const conflict = pb.perm & ~pa.shared;
      if (conflict) {
        const n = node.nodeName;
        throw new BlkioError(
          'EPERM',
          `Permission conflict on node '${n}': permissions '${permNames(conflict)}' are both required by ` +
            `${b.parent.describe()} (uses node '${n}' as '${b.name}' child) and unshared by ` +
            `${a.parent.describe()} (uses node '${n}' as '${a.name}' child).`,
        );
      }
    }
  }
  const { perm, shared } = cumulative(node, tentative);
  if (perm & (PERM_WRITE | PERM_WRITE_UNCHANGED) && !node.isWritable) {
    throw new BlkioError('EPERM', wasWritable.has(node)
      ? `Read-only block node '${node.nodeName}' cannot support read-write users`
      : 'Block node is read-only');
  }
  // A write padded to the alignment may reach past the end, and only 'resize' may go there.
  // (The length is read last: a node still opening has none, and its alignment is still 1.)
  const align = node.limits.requestAlignment;
  if (perm & (PERM_WRITE | PERM_WRITE_UNCHANGED) && !(perm & PERM_RESIZE) && align > 1 && node.getLength() % align) {
    throw new BlkioError('EPERM', "Cannot get 'write' permission without 'resize': Image size is not a multiple of request alignment");
  }
  const update = node.driver.preparePermissions?.(node, perm, shared);
  if (update) updates.push(update);
}

/**
 * Apply new permissions to `edges` (or just re-derive below `roots`), recomputing every edge
 * underneath. Nothing changes if any node would end up with a conflict. `wasWritable`: nodes a
 * reopen is making read-only (a writer there is refused in other words).
 */
export function refreshPermissions(changes: Map<BdrvChild, PermPair>, roots: BlockNode[], wasWritable = new Set<BlockNode>()): void {
  const tentative: Tentative = new Map(changes);
  const tops = new Set<BlockNode>(roots);
  for (const edge of changes.keys()) tops.add(edge.node);
  for (const node of tops) computeBelow(node, tentative);
  const visited = new Set<BlockNode>();
  const updates: PermissionUpdate[] = [];
  const visit = (node: BlockNode): void => {
    if (visited.has(node)) return;
    visited.add(node);
    checkNode(node, tentative, updates, wasWritable);
    for (const c of node.children) visit(c.node);
  };
  try {
    for (const node of tops) visit(node);
  } catch (e) {
    for (const update of updates.reverse()) update.abort();
    throw e;
  }
  for (const [edge, p] of tentative) {
    edge.perm = p.perm;
    edge.shared = p.shared;
  }
  for (const update of updates) update.commit();
}
