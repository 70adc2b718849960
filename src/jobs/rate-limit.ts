/**
 * A bytes-per-second limit (qemu-img's `-r`): the bytes counted are due at the rate from the
 * time counting started, and a request waits until the bytes before it are due. The first
 * request never waits, and one that comes after the schedule has caught up starts a fresh
 * one (no credit builds up while requests come slower than the rate).
 *
 * qemu-img convert lets a write start up to one 100 ms slice ahead of the schedule (measured
 * against qemu-img 7.2: 2 MiB writes at 8 MiB/s start 150 ms apart, 64 KiB writes at 1 MiB/s
 * go two at once and then 62.5 ms apart); its commit job waits for the last bytes too.
 *
 *   const limit = new RateLimit(bytesPerSecond, { aheadMs });
 *   await limit.wait();     // before each request
 *   limit.account(bytes);   // as it starts
 */

/** Time in milliseconds; injectable so tests need not wait. */
export interface Clock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

export const realClock: Clock = {
  now: () => performance.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
};

/** How far ahead of the schedule qemu-img convert lets a write start. */
export const CONVERT_AHEAD_MS = 100;

export interface RateLimitOptions {
  /** A request may start this long before the bytes counted before it are due. */
  aheadMs?: number;
  clock?: Clock;
}

export class RateLimit {
  private readonly bytesPerMs: number;
  private readonly aheadMs: number;
  private readonly clock: Clock;
  private start = 0;
  private counted = 0;

  constructor(bytesPerSecond: number, options: RateLimitOptions = {}) {
    this.bytesPerMs = bytesPerSecond / 1000;
    this.aheadMs = options.aheadMs ?? 0;
    this.clock = options.clock ?? realClock;
  }

  /** Wait until the bytes counted so far allow another request, or `stop()` says to give up waiting. */
  async wait(stop?: () => boolean): Promise<void> {
    for (let delay = this.delay(); delay > 0 && !stop?.(); delay = this.delay()) await this.clock.sleep(delay);
  }

  /** Count `bytes` of a request that starts now. */
  account(bytes: number): void {
    this.delay();
    this.counted += bytes;
  }

  /** How long a request has to wait now (0: none); starts the schedule afresh once everything counted is due. */
  private delay(): number {
    const now = this.clock.now();
    const due = this.start + this.counted / this.bytesPerMs;
    if (due <= now) {
      this.start = now;
      this.counted = 0;
      return 0;
    }
    return Math.max(0, due - this.aheadMs - now);
  }
}
