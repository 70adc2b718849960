/**
 * The lock drivers hold around metadata updates that span awaits (QEMU's CoMutex): requests of
 * one node run concurrently, so an allocation must not interleave with another.
 */

/** An async mutex: `run` calls its function once the lock is held, callers first come first served. */
export class Mutex {
  private locked = false;
  /** Who waits for the lock, first come first served. */
  private readonly waiters: Array<() => void> = [];

  /** Resolves once the lock is held; an uncontended lock costs no promise chain. */
  private acquire(): Promise<void> | undefined {
    if (!this.locked) {
      this.locked = true;
      return undefined;
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.locked = false;
  }

  /** Held by someone: code that runs without waiting must leave the guarded state alone. */
  get held(): boolean {
    return this.locked;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const waiting = this.acquire();
    if (waiting) await waiting;
    try {
      return await fn();
    } finally {
      this.release();
    }
  }
}
