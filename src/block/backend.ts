/**
 * A root user of the graph (QEMU's BlockBackend): what qemu-io's command loop, qemu-img and
 * jobs hold. It owns one edge to its root node, checks request ranges against the length, and
 * grows its permissions on demand (a `write` command asks for WRITE first).
 */
import { BlkioError, errno } from '../errors.js';
import { BdrvChild, type ChildParent } from './child.js';
import { ROLE_PRIMARY, ROLE_FILTERED } from './driver.js';
import type { BlockNode } from './node.js';
import { PERM_ALL } from './permissions.js';
import { attachChild, detachChild, updateEdgePerms } from './graph.js';
import { REQUEST_MAX_BYTES, REQ_ZERO_WRITE } from './flags.js';
import { nodeVmState } from './io.js';

export class BlockBackend implements ChildParent {
  readonly root: BdrvChild;

  private constructor(readonly name: string, root: BlockNode) {
    this.root = new BdrvChild(this, 'root', ROLE_PRIMARY | ROLE_FILTERED, root);
  }

  /** Attach a new root user to `node` with the given permissions; fails with QEMU's conflict texts. */
  static attach(node: BlockNode, perm: number, shared = PERM_ALL, name = ''): BlockBackend {
    const blk = new BlockBackend(name, node);
    attachChild(blk.root, perm, shared);
    return blk;
  }

  describe(): string {
    return this.name ? `block device '${this.name}'` : 'an unnamed block device';
  }

  get node(): BlockNode {
    return this.root.node;
  }

  /** Take additional permissions (never drops any), as qemu-io does before writing. */
  requirePerms(perm: number): void {
    if ((this.root.perm & perm) === perm) return;
    updateEdgePerms(this.root, this.root.perm | perm, this.root.shared);
  }

  setPerms(perm: number, shared: number): void {
    updateEdgePerms(this.root, perm, shared);
  }

  /** Requests, the length and flushes need a medium (blk_is_available): a CD-ROM drive may have none. */
  private checkAvailable(): void {
    if (!isInserted(this.node)) throw errno('ENOMEDIUM');
  }

  getLength(): number {
    this.checkAvailable();
    return this.root.getLength();
  }

  /** Zero writes carry no buffer, so QEMU does not hold them to the 32-bit request limit. */
  private checkRequest(offset: number, bytes: number, limited = true): void {
    this.checkAvailable();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset < 0 || bytes < 0) throw errno('EIO');
    if (limited && bytes > REQUEST_MAX_BYTES) throw errno('EIO');
    const length = this.root.getLength();
    if (offset > length || length - offset < bytes) throw errno('EIO');
  }

  async read(offset: number, bytes: number, buf: Uint8Array, flags = 0): Promise<void> {
    this.checkRequest(offset, bytes);
    await this.root.read(offset, bytes, buf, flags);
  }

  async write(offset: number, bytes: number, buf: Uint8Array, flags = 0): Promise<void> {
    this.checkRequest(offset, bytes);
    await this.root.write(offset, bytes, buf, flags);
  }

  async writeZeroes(offset: number, bytes: number, flags = 0): Promise<void> {
    this.checkRequest(offset, bytes, false);
    await this.root.writeZeroes(offset, bytes, flags | REQ_ZERO_WRITE);
  }

  async writeCompressed(offset: number, bytes: number, buf: Uint8Array): Promise<void> {
    this.checkRequest(offset, bytes);
    await this.root.writeCompressed(offset, bytes, buf);
  }

  async discard(offset: number, bytes: number): Promise<void> {
    this.checkRequest(offset, bytes);
    await this.root.discard(offset, bytes);
  }

  async flush(): Promise<void> {
    this.checkAvailable();
    await this.root.flush();
  }

  /**
   * Write VM state at `pos` of the state stream (blk_save_vmstate; the caller flushes in
   * writethrough mode). A bigint `pos` is bounds-checked exactly, as QEMU's int64.
   */
  saveVmState(pos: number | bigint, bytes: number, buf: Uint8Array): Promise<void> {
    return nodeVmState(this.node, 'saveVmState', pos, bytes, buf);
  }

  loadVmState(pos: number | bigint, bytes: number, buf: Uint8Array): Promise<void> {
    return nodeVmState(this.node, 'loadVmState', pos, bytes, buf);
  }

  async truncate(size: number, exact: boolean, prealloc = 'off'): Promise<void> {
    if (!isInserted(this.node)) throw new BlkioError('ENOMEDIUM', 'No medium inserted');
    await this.root.truncate(size, exact, prealloc);
  }

  /** Drop the edge; the nodes stay open until the layer closes them. */
  detach(): void {
    detachChild(this.root);
  }
}

/** QEMU's bdrv_is_inserted: the driver says, or else every child has its medium. */
export function isInserted(node: BlockNode): boolean {
  return node.driver.isInserted?.(node) ?? node.children.every((edge) => isInserted(edge.node));
}
