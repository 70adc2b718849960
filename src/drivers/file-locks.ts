/**
 * Image locking as QEMU's file-posix does it, so blkio and QEMU see each other's locks.
 *
 * A file node turns the permissions its parents hold into shared locks on single bytes of the
 * image: byte 100+bit for each permission it takes, byte 200+bit for each one it does not
 * share (bits in permission order: consistent read, write, write unchanged, resize). A node
 * may take a permission only if no other open file locks that permission's "unshared" byte,
 * and may unshare one only if nobody else locks its "taken" byte.
 *
 * With the native addon these are Linux open-file-description (OFD) locks on a descriptor of
 * the node's own, so they conflict with QEMU and other blkio processes, and between two nodes
 * (or two block layers) of one process alike. Without the addon (BLKIO_NO_NATIVE=1, or no
 * Linux) a lock table of this process stands in: it sees only this process's file nodes.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { BlkioError, errnoError } from '../errors.js';
import type { PermissionUpdate } from '../block/driver.js';
import { PERM_ALL, permNames } from '../block/permissions.js';
import { nativeAddon } from '../native-addon.js';
import { hostPath } from '../byte-strings.js';

/** The first lock byte for permissions taken, and for permissions not shared. */
const TAKEN_BASE = 100;
const UNSHARED_BASE = 200;

/** The addon's OFD lock calls (native/blkio_native.c). */
interface OfdAddon {
  ofdLock(fd: number, byte: number, lock: boolean): void;
  ofdLockConflicts(fd: number, byte: number): boolean;
}

/** Where one open file's lock bytes live. */
interface ByteLocks {
  /** Take (lock) or drop a shared lock on `byte`; throws when the host refuses. */
  set(byte: number, lock: boolean): void;
  /** Whether another open file holds a lock on `byte`. */
  lockedElsewhere(byte: number): boolean;
  close(): Promise<void>;
}

/** OFD locks on a descriptor opened for locking only (the data handle is replaced on reopen). */
class OfdLocks implements ByteLocks {
  constructor(private readonly addon: OfdAddon, private readonly handle: FileHandle) {}

  set(byte: number, lock: boolean): void {
    this.addon.ofdLock(this.handle.fd, byte, lock);
  }

  lockedElsewhere(byte: number): boolean {
    return this.addon.ofdLockConflicts(this.handle.fd, byte);
  }

  /** Closing the descriptor drops its locks. */
  close(): Promise<void> {
    return this.handle.close();
  }
}

/**
 * The fallback: this process's own lock table, keyed by the file's (device, inode) like the
 * kernel's. Module-wide on purpose: locks belong to files, not to one block layer.
 */
class ProcessLocks implements ByteLocks {
  private static readonly openFiles = new Map<string, Set<ProcessLocks>>();
  private readonly held = new Set<number>();

  constructor(private readonly key: string) {
    let files = ProcessLocks.openFiles.get(key);
    if (!files) ProcessLocks.openFiles.set(key, (files = new Set()));
    files.add(this);
  }

  set(byte: number, lock: boolean): void {
    if (lock) this.held.add(byte);
    else this.held.delete(byte);
  }

  lockedElsewhere(byte: number): boolean {
    return [...(ProcessLocks.openFiles.get(this.key) ?? [])].some((other) => other !== this && other.held.has(byte));
  }

  async close(): Promise<void> {
    const files = ProcessLocks.openFiles.get(this.key);
    files?.delete(this);
    if (files?.size === 0) ProcessLocks.openFiles.delete(this.key);
  }
}

/** The lock bytes for permissions `perm` taken and `unshared` not shared. */
function lockBytes(perm: number, unshared: number): Set<number> {
  const bytes = new Set<number>();
  for (let bit = 0; 1 << bit <= PERM_ALL; bit++) {
    if (perm & (1 << bit)) bytes.add(TAKEN_BASE + bit);
    if (unshared & (1 << bit)) bytes.add(UNSHARED_BASE + bit);
  }
  return bytes;
}

interface Held {
  perm: number;
  unshared: number;
}

export class FileLock {
  /** What was committed last (the bytes an aborted change falls back to). */
  private committed: Held = { perm: 0, unshared: 0 };
  private readonly held = new Set<number>();

  private constructor(private readonly bytes: ByteLocks, private readonly filename: string) {}

  /**
   * The locks of a file node on `filename` (device `dev`, inode `ino`), holding nothing yet:
   * OFD locks when the addon is there, else the in-process table.
   */
  static async open(filename: string, dev: number, ino: number): Promise<FileLock> {
    const addon = nativeAddon() as Partial<OfdAddon> | undefined;
    if (!addon?.ofdLock || !addon.ofdLockConflicts) return new FileLock(new ProcessLocks(`${dev}:${ino}`), filename);
    const handle = await open(hostPath(filename), 'r').catch((e: unknown) => {
      throw errnoError(`Could not open '${filename}'`, e);
    });
    return new FileLock(new OfdLocks(addon as OfdAddon, handle), filename);
  }

  /** Lock exactly the bytes of `perm`/`unshared`; a refused lock throws QEMU's text, the rest stays as it was. */
  private hold(perm: number, unshared: number): void {
    const wanted = lockBytes(perm, unshared);
    for (const byte of [...this.held].filter((b) => !wanted.has(b))) {
      this.bytes.set(byte, false);
      this.held.delete(byte);
    }
    for (const byte of [...wanted].filter((b) => !this.held.has(b))) {
      try {
        this.bytes.set(byte, true);
      } catch {
        throw new BlkioError('EAGAIN', `Failed to lock byte ${byte}`);
      }
      this.held.add(byte);
    }
  }

  /**
   * The node's parents will hold `perm` and share `shared`. As file-posix: a change that only
   * drops locks is not checked; otherwise the union of old and new bytes is locked first (so a
   * second node changing in the same update sees them), then checked against every other open
   * file: first each permission taken, then each one not shared, lowest bit first.
   */
  prepare(perm: number, shared: number): PermissionUpdate {
    const unshared = PERM_ALL & ~shared;
    const old = this.committed;
    const commit = (): void => {
      this.committed = { perm, unshared };
      this.hold(perm, unshared);
    };
    const abort = (): void => this.hold(old.perm, old.unshared);
    if ((old.perm | perm) === old.perm && (old.unshared | unshared) === old.unshared) return { commit, abort };
    try {
      this.hold(old.perm | perm, old.unshared | unshared);
      this.checkConflicts(perm, unshared);
    } catch (e) {
      abort();
      throw e;
    }
    return { commit, abort };
  }

  private checkConflicts(perm: number, unshared: number): void {
    const conflict = (mask: number, base: number): number => {
      for (let bit = 0; 1 << bit <= mask; bit++) {
        if (mask & (1 << bit) && this.bytes.lockedElsewhere(base + bit)) return 1 << bit;
      }
      return 0;
    };
    const notShared = conflict(perm, UNSHARED_BASE);
    const inUse = notShared ? 0 : conflict(unshared, TAKEN_BASE);
    if (notShared || inUse) {
      const message = notShared
        ? `Failed to get "${permNames(notShared)}" lock`
        : `Failed to get shared "${permNames(inUse)}" lock`;
      throw new BlkioError('EAGAIN', message, [`Is another process using the image [${this.filename}]?`]);
    }
  }

  /** The file is closed: its locks go with it. */
  release(): Promise<void> {
    return this.bytes.close();
  }
}
