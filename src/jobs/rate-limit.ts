/**
 * A bytes-per-second limit the way QEMU's jobs and qemu-img keep to one (`-r`): bytes are
 * counted in time slices of 100 ms; a request may start as long as the current slice's
 * quota is not used up, and once it is, the next one waits until the slice, stretched to
 * cover everything counted in it, has passed. The first request never waits, and the bytes
 * of a request only delay the ones after it.
 *
 *   const limit = new RateLimit(bytesPerSecond);
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

const SLICE_MS = 100;

export class RateLimit {
  private readonly sliceQuota: number;
  private sliceStart = 0;
  private sliceEnd = -Infinity;
  private dispatched = 0;

  constructor(bytesPerSecond: number, private readonly clock: Clock = realClock) {
    this.sliceQuota = Math.max((bytesPerSecond * SLICE_MS) / 1000, 1);
  }

  /** Wait until the bytes counted so far keep to the rate, or `stop()` says to give up waiting. */
  async wait(stop?: () => boolean): Promise<void> {
    for (let delay = this.delayFor(0); delay > 0 && !stop?.(); delay = this.delayFor(0)) {
      await this.clock.sleep(delay);
    }
  }

  /** Count `bytes` of a request that starts now. */
  account(bytes: number): void {
    this.delayFor(bytes);
  }

  /** Count `bytes` and return how long the next request has to wait (0: none). */
  private delayFor(bytes: number): number {
    const now = this.clock.now();
    if (this.sliceEnd <= now) {
      // The (possibly stretched) slice is over: a fresh one starts with nothing counted.
      this.sliceStart = now;
      this.sliceEnd = now + SLICE_MS;
      this.dispatched = 0;
    }
    this.dispatched += bytes;
    if (this.dispatched < this.sliceQuota) return 0;
    this.sliceEnd = this.sliceStart + (this.dispatched / this.sliceQuota) * SLICE_MS;
    return this.sliceEnd - now;
  }
}
