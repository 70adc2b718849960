import { describe, expect, it } from 'vitest';
import { RateLimit, type Clock } from '../../../src/jobs/rate-limit.js';

/** A clock that only moves when someone sleeps. */
function fakeClock(): Clock & { sleeps: number[] } {
  let now = 1000;
  const sleeps: number[] = [];
  return {
    sleeps,
    now: () => now,
    sleep: async (ms) => {
      sleeps.push(ms);
      now += ms;
    },
  };
}

/** Issue requests of the given sizes one after the other; the start time of each. */
async function starts(limit: RateLimit, clock: Clock, sizes: number[]): Promise<number[]> {
  const times: number[] = [];
  for (const bytes of sizes) {
    await limit.wait();
    times.push(clock.now() - 1000);
    limit.account(bytes);
  }
  return times;
}

describe('RateLimit', () => {
  it('lets the first request go and delays each later one by the bytes before it', async () => {
    const clock = fakeClock();
    const limit = new RateLimit(1 << 20, clock);
    // 2 MiB requests at 1 MiB/s start 2 s apart.
    expect(await starts(limit, clock, [2 << 20, 2 << 20, 2 << 20, 2 << 20])).toEqual([0, 2000, 4000, 6000]);
  });

  it('lets requests within a 100 ms slice quota go at once', async () => {
    const clock = fakeClock();
    const limit = new RateLimit(10_000, clock);
    // The quota is 1000 bytes a slice: four of 250 fill it, the fifth waits for the next slice.
    expect(await starts(limit, clock, [250, 250, 250, 250, 250, 250])).toEqual([0, 0, 0, 0, 100, 100]);
  });

  it('forgets slices that passed while nothing was issued', async () => {
    const clock = fakeClock();
    const limit = new RateLimit(1000, clock);
    expect(await starts(limit, clock, [500])).toEqual([0]);
    await clock.sleep(10_000);
    // The slice stretched to 500 ms is long over: no waiting, no credit either.
    expect((await starts(limit, clock, [500, 500])).map((t) => t - 10_000)).toEqual([0, 500]);
  });

  it('stops waiting when asked to', async () => {
    const clock = fakeClock();
    const limit = new RateLimit(1000, clock);
    limit.account(1 << 20);
    await limit.wait(() => true);
    expect(clock.sleeps).toEqual([]);
  });
});
