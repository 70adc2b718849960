import { describe, expect, it } from 'vitest';
import { BlkioError } from '../../../src/errors.js';
import { isCancelled, Job } from '../../../src/jobs/job.js';
import { newLayer } from './fixtures.js';

const tick = () => new Promise((r) => setTimeout(r, 1));

async function* items(count: number, bytes = 10) {
  for (let i = 0; i < count; i++) yield { index: i, bytes };
}

describe('Job', () => {
  it('keeps at most inFlight requests running, and uses them all', async () => {
    const job = new Job(newLayer(), { inFlight: 3 });
    job.setTotal(200);
    let running = 0;
    let peak = 0;
    await job.run(() => job.forEachInFlight(items(20), async () => {
      running++;
      peak = Math.max(peak, running);
      await tick();
      running--;
    }));
    expect(peak).toBe(3);
    expect(job.done).toBe(200);
  });

  it('reports monotonic progress that ends at the total', async () => {
    const seen: number[] = [];
    const job = new Job(newLayer(), { inFlight: 4, onProgress: (done) => seen.push(done) });
    job.setTotal(300);
    async function* mixed() {
      for (let i = 0; i < 10; i++) {
        job.advance(10); // a skipped range
        yield { bytes: 20 };
      }
    }
    await job.run(() => job.forEachInFlight(mixed(), async () => {
      await new Promise((r) => setTimeout(r, Math.random() * 3));
    }));
    expect(seen.every((d, i) => i === 0 || d >= seen[i - 1])).toBe(true);
    expect(seen[seen.length - 1]).toBe(300);
  });

  it('stops issuing on cancel, lets running requests finish, undoes its graph changes', async () => {
    const job = new Job(newLayer(), { inFlight: 2 });
    job.setTotal(1000);
    const undone: string[] = [];
    job.own(() => void undone.push('first'));
    job.own(() => void undone.push('second'));
    let started = 0;
    let finished = 0;
    const run = job.run(() => job.forEachInFlight(items(100), async () => {
      started++;
      if (started === 5) job.cancel();
      await tick();
      finished++;
    }));
    const err = await run.catch((e: unknown) => e);
    expect(isCancelled(err)).toBe(true);
    expect((err as BlkioError).message).toBe('Job was cancelled');
    expect(started).toBeLessThanOrEqual(6);
    expect(finished).toBe(started);
    expect(undone).toEqual(['second', 'first']);
    expect(job.done).toBeLessThan(1000);
  });

  it('is cancelled by an AbortSignal', async () => {
    const controller = new AbortController();
    const job = new Job(newLayer(), { signal: controller.signal });
    job.setTotal(1000);
    const err = await job.run(() => job.forEachInFlight(items(100), async () => {
      controller.abort();
      await tick();
    })).catch((e: unknown) => e);
    expect(isCancelled(err)).toBe(true);
  });

  it('fails with the first error after the running requests finish', async () => {
    const job = new Job(newLayer(), { inFlight: 4 });
    job.setTotal(1000);
    let running = 0;
    const err = await job.run(() => job.forEachInFlight(items(100), async ({ index }) => {
      running++;
      await tick();
      running--;
      if (index === 3) throw new BlkioError('EIO');
    })).catch((e: unknown) => e);
    expect((err as BlkioError).code).toBe('EIO');
    expect(running).toBe(0);
  });

  it('keeps to a rate limit', async () => {
    const job = new Job(newLayer(), { inFlight: 8, rateLimit: 1000 });
    job.setTotal(200);
    const t0 = performance.now();
    await job.run(() => job.forEachInFlight(items(4, 50), async () => {}));
    // 4 x 50 bytes at 1000 B/s: the job ends once the last 50 are due, after 200 ms.
    expect(performance.now() - t0).toBeGreaterThanOrEqual(195);
  });
});
