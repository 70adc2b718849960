/**
 * An edge of the graph (QEMU's BdrvChild): a parent uses a child node in a role, holding
 * permissions and sharing others. Every request a parent makes goes through its edge, where
 * the generic layer (io.ts) checks permissions, flags and alignment.
 */
import { BlkioError } from '../errors.js';
import type { BlockStatusResult, CreateRequest } from './driver.js';
import type { BlockNode } from './node.js';
import * as io from './io.js';

/** Whoever holds an edge: a node, or a root user (BlockBackend) such as the qemu-io command loop. */
export interface ChildParent {
  /** `node 'x'`, `block device 'x'` or `an unnamed block device`, as permission errors name it. */
  describe(): string;
}

export class BdrvChild {
  perm = 0;
  shared = 0;

  constructor(
    readonly parent: ChildParent,
    /** The role name: `file`, `backing`, `image`, `test`, `raw`, `children.0`, or `root`. */
    readonly name: string,
    /** ROLE_* bits. */
    readonly role: number,
    public node: BlockNode,
  ) {}

  read(offset: number, bytes: number, buf: Uint8Array, flags = 0): Promise<void> {
    return io.childRead(this, offset, bytes, buf, flags);
  }

  write(offset: number, bytes: number, buf: Uint8Array, flags = 0): Promise<void> {
    return io.childWrite(this, offset, bytes, buf, flags);
  }

  writeZeroes(offset: number, bytes: number, flags = 0): Promise<void> {
    return io.childWriteZeroes(this, offset, bytes, flags);
  }

  writeCompressed(offset: number, bytes: number, buf: Uint8Array): Promise<void> {
    return io.childWriteCompressed(this, offset, bytes, buf);
  }

  discard(offset: number, bytes: number): Promise<void> {
    return io.childDiscard(this, offset, bytes);
  }

  flush(): Promise<void> {
    return io.nodeFlush(this.node);
  }

  truncate(size: number, exact: boolean, prealloc = 'off', flags = 0): Promise<void> {
    return io.childTruncate(this, size, exact, prealloc, flags);
  }

  /** The child's own creation, as a format whose creation is its protocol's (raw) hands it on. */
  create(request: CreateRequest): Promise<void> {
    const { driver } = this.node;
    if (!driver.create) throw new BlkioError('ENOTSUP', `Protocol driver '${driver.name}' does not support image creation`);
    return driver.create(this, request);
  }

  blockStatus(offset: number, bytes: number): Promise<BlockStatusResult> {
    return io.nodeBlockStatus(this.node, offset, bytes);
  }

  getLength(): number {
    return this.node.getLength();
  }
}
