import { describe, expect, it } from 'vitest';
import { CONVERT_AHEAD_MS, RateLimit, type Clock } from '../../../src/jobs/rate-limit.js';

const MiB = 1 << 20;

/** A clock that only moves when someone sleeps (or the test moves it). */
function fakeClock(): Clock & { sleeps: number[]; advance(ms: number): void } {
  let now = 1000;
  const sleeps: number[] = [];
  return {
    sleeps,
    now: () => now,
    sleep: async (ms) => {
      sleeps.push(ms);
      now += ms;
    },
    advance: (ms) => {
      now += ms;
    },
  };
}

/** Issue requests of the given sizes one after the other: the start time of each. */
async function starts(limit: RateLimit, clock: Clock, sizes: number[]): Promise<number[]> {
  const from = clock.now();
  const times: number[] = [];
  for (const bytes of sizes) {
    await limit.wait();
    times.push(clock.now() - from);
    limit.account(bytes);
  }
  return times;
}

describe('RateLimit', () => {
  it('delays each request until the bytes before it are due', async () => {
    const clock = fakeClock();
    const limit = new RateLimit(MiB, { clock });
    expect(await starts(limit, clock, [2 * MiB, 2 * MiB, 2 * MiB, 2 * MiB])).toEqual([0, 2000, 4000, 6000]);
  });

  it('lets convert writes start one slice ahead (qemu-img 7.2 timings)', async () => {
    const clock = fakeClock();
    const convert = new RateLimit(8 * MiB, { clock, aheadMs: CONVERT_AHEAD_MS });
    expect(await starts(convert, clock, [2 * MiB, 2 * MiB, 2 * MiB, 2 * MiB])).toEqual([0, 150, 400, 650]);
    const small = fakeClock();
    const sixtyFour = new RateLimit(MiB, { clock: small, aheadMs: CONVERT_AHEAD_MS });
    expect(await starts(sixtyFour, small, Array(5).fill(64 * 1024))).toEqual([0, 0, 25, 87.5, 150]);
  });

  it('gives no credit for time when nothing was due', async () => {
    const clock = fakeClock();
    const limit = new RateLimit(1000, { clock });
    expect(await starts(limit, clock, [500])).toEqual([0]);
    clock.advance(10_000);
    expect(await starts(limit, clock, [500, 500, 500])).toEqual([0, 500, 1000]);
  });

  it('stops waiting when asked to', async () => {
    const clock = fakeClock();
    const limit = new RateLimit(1000, { clock });
    limit.account(MiB);
    await limit.wait(() => true);
    expect(clock.sleeps).toEqual([]);
    await limit.wait();
    expect(clock.sleeps).toEqual([MiB]);
  });
});
