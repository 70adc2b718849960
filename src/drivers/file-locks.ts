/**
 * Image locking as QEMU's file-posix does it, emulated inside one process.
 *
 * QEMU turns the permissions a file node's parents hold into byte-range locks on the image:
 * one byte per permission it takes, one per permission it does not share. A node may take a
 * permission only if no other open file holds that permission's "unshared" byte, and may
 * unshare one only if nobody else holds its "taken" byte. Those are OFD locks, so two file
 * nodes on the same image conflict even inside one process.
 *
 * Node has no fcntl() locks, so this module keeps the lock table itself, keyed by the file's
 * (device, inode) like the kernel's. It therefore only sees the file nodes of this process:
 * locks held by other processes (QEMU, another blkio) are neither seen nor honoured.
 */
import { BlkioError } from '../errors.js';
import type { PermissionUpdate } from '../block/driver.js';
import { PERM_ALL, permNames } from '../block/permissions.js';

/** Bytes locked by one open file: permissions taken, and permissions not shared. */
interface LockBytes {
  perm: number;
  unshared: number;
}

/**
 * The host's lock table, so module-wide on purpose: locks belong to files, not to one block
 * layer, and two graphs of one process conflict exactly as two processes would.
 */
const openFiles = new Map<string, Set<FileLock>>();

/** The first bit of `mask` (lowest first, the order QEMU checks them in). */
function firstBit(mask: number): number {
  return mask & -mask;
}

export class FileLock {
  /** The bytes this file holds now. During a permission change: the union of old and new. */
  private held: LockBytes = { perm: 0, unshared: 0 };
  /** What was committed last (the bytes an aborted change falls back to). */
  private committed: LockBytes = { perm: 0, unshared: 0 };
  private readonly key: string;

  /** Register an open file identified by its device and inode; `filename` is named in hints. */
  constructor(dev: number, ino: number, private readonly filename: string) {
    this.key = `${dev}:${ino}`;
    let files = openFiles.get(this.key);
    if (!files) openFiles.set(this.key, (files = new Set()));
    files.add(this);
  }

  /**
   * The node's parents will hold `perm` and share `shared`. As file-posix: a change that only
   * drops locks is not checked; otherwise the new bytes are locked first (so a second node
   * changing in the same update sees them) and checked against every other open file.
   */
  prepare(perm: number, shared: number): PermissionUpdate {
    const unshared = PERM_ALL & ~shared;
    const old = this.committed;
    const commit = (): void => {
      this.held = this.committed = { perm, unshared };
    };
    const abort = (): void => {
      this.held = this.committed;
    };
    if ((old.perm | perm) === old.perm && (old.unshared | unshared) === old.unshared) return { commit, abort };
    this.held = { perm: old.perm | perm, unshared: old.unshared | unshared };
    let theirs: LockBytes = { perm: 0, unshared: 0 };
    for (const other of openFiles.get(this.key) ?? []) {
      if (other !== this) theirs = { perm: theirs.perm | other.held.perm, unshared: theirs.unshared | other.held.unshared };
    }
    const notShared = perm & theirs.unshared;
    const inUse = unshared & theirs.perm;
    if (notShared || inUse) {
      this.held = old;
      const message = notShared
        ? `Failed to get "${permNames(firstBit(notShared))}" lock`
        : `Failed to get shared "${permNames(firstBit(inUse))}" lock`;
      throw new BlkioError('EAGAIN', message, [`Is another process using the image [${this.filename}]?`]);
    }
    return { commit, abort };
  }

  /** The file is closed: its locks go with it. */
  release(): void {
    const files = openFiles.get(this.key);
    files?.delete(this);
    if (files?.size === 0) openFiles.delete(this.key);
  }
}
