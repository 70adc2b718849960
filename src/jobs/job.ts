/**
 * The runner behind stream, commit and mirror. A job
 *   - owns the graph changes it makes (filters it inserts, users it attaches): each change
 *     registers its undo, and `run` undoes them in reverse order however the job ends;
 *   - reports progress as bytes done of a total, monotonically, ending at the total;
 *   - can be cancelled (`cancel()` or an AbortSignal): no new requests are issued, the ones in
 *     flight finish, the graph is restored, and `run` rejects with an ECANCELED BlkioError;
 *   - keeps several requests in flight (`forEachInFlight`), so it runs at the storage's speed.
 */
import { BlkioError } from '../errors.js';
import { BlockBackend } from '../block/backend.js';
import { requestDone } from '../block/io.js';
import { replaceChildNode, type BlockLayer } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import type { FlatOptions } from '../options/types.js';
import { RateLimit } from './rate-limit.js';

export const DEFAULT_CHUNK_SIZE = 2 * 1024 * 1024;
export const DEFAULT_IN_FLIGHT = 4;

export interface JobOptions {
  /** Bytes per request (default 2 MiB). */
  chunkSize?: number;
  /** Requests in flight at once (default 4). */
  inFlight?: number;
  /** Bytes per second to stay under (qemu-img's `-r`); unlimited when absent or 0. */
  rateLimit?: number;
  /** Called after every change of progress. */
  onProgress?: (done: number, total: number) => void;
  /** Aborting it cancels the job. */
  signal?: AbortSignal;
}

/** Whether `e` is the error a cancelled job ends with. */
export function isCancelled(e: unknown): boolean {
  return e instanceof BlkioError && e.code === 'ECANCELED';
}

export class Job {
  readonly chunkSize: number;
  readonly inFlight: number;
  private readonly rateLimit: RateLimit | undefined;
  private readonly onProgress?: (done: number, total: number) => void;
  private readonly undo: Array<() => void | Promise<void>> = [];
  private doneBytes = 0;
  private totalBytes = 0;
  private cancelRequested = false;

  constructor(readonly layer: BlockLayer, options: JobOptions = {}) {
    this.chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    this.inFlight = Math.max(1, options.inFlight ?? DEFAULT_IN_FLIGHT);
    this.rateLimit = options.rateLimit ? new RateLimit(options.rateLimit) : undefined;
    this.onProgress = options.onProgress;
    const signal = options.signal;
    if (signal) {
      if (signal.aborted) this.cancel();
      else signal.addEventListener('abort', () => this.cancel(), { once: true });
    }
  }

  get done(): number {
    return this.doneBytes;
  }

  get total(): number {
    return this.totalBytes;
  }

  get cancelled(): boolean {
    return this.cancelRequested;
  }

  cancel(): void {
    this.cancelRequested = true;
  }

  setTotal(total: number): void {
    this.totalBytes = total;
    this.onProgress?.(this.doneBytes, this.totalBytes);
  }

  /** Count `bytes` as done (copied, or found not to need copying). */
  advance(bytes: number): void {
    if (bytes <= 0) return;
    this.doneBytes = Math.min(this.totalBytes, this.doneBytes + bytes);
    this.onProgress?.(this.doneBytes, this.totalBytes);
  }

  /** Throw the ECANCELED error if the job was asked to stop. */
  checkCancelled(): void {
    if (this.cancelRequested) throw new BlkioError('ECANCELED', 'Job was cancelled');
  }

  /** Register the undo of a graph change this job made. */
  own(undo: () => void | Promise<void>): void {
    this.undo.push(undo);
  }

  /**
   * Insert a filter node above `below` (taking over all of its parents) for the job's
   * lifetime; `childKey` is the filter's option naming its child (`file`, or `backing` for
   * mirror_top). The node is implicit: users don't see it in listings.
   */
  async insertFilter(below: BlockNode, options: FlatOptions, childKey = 'file'): Promise<BlockNode> {
    const filter = await this.layer.insertFilterAbove(below, options, true, childKey);
    this.own(() => removeFilter(this.layer, filter, below));
    return filter;
  }

  /** A root user of `node` for the job's own requests, detached when the job ends. */
  attach(node: BlockNode, perm: number, shared: number): BlockBackend {
    const blk = BlockBackend.attach(node, perm, shared);
    this.own(() => blk.detach());
    return blk;
  }

  /**
   * Run the job's body, then undo its graph changes (also after an error or a cancel; the
   * body's error is the one reported then).
   */
  async run<T>(body: () => Promise<T>): Promise<T> {
    let result: T;
    try {
      result = await body();
    } catch (e) {
      await this.cleanUp().catch(() => {});
      throw e;
    }
    await this.cleanUp();
    return result;
  }

  private async cleanUp(): Promise<void> {
    let first: unknown;
    while (this.undo.length > 0) {
      try {
        await this.undo.pop()!();
      } catch (e) {
        first ??= e;
      }
    }
    if (first !== undefined) throw first;
  }

  /**
   * Process work items with up to `inFlight` of them running at once. Items come from an
   * async source (which may itself query block status and call `advance` for what it skips);
   * each item is `bytes` long and counts as done when its work completes. On the first error
   * or a cancel, nothing new starts, the running items finish, and the error is thrown.
   */
  async forEachInFlight<T extends { bytes: number }>(items: AsyncIterable<T>, work: (item: T) => Promise<void>): Promise<void> {
    const running = new Set<Promise<void>>();
    let failure: { error: unknown } | undefined;
    const start = (item: T): void => {
      const p = work(item).then(
        () => this.advance(item.bytes),
        (error: unknown) => {
          failure ??= { error };
        },
      );
      const tracked = p.finally(() => running.delete(tracked));
      running.add(tracked);
    };
    try {
      for await (const item of items) {
        if (failure || this.cancelRequested) break;
        await this.rateLimit?.wait(() => this.cancelRequested);
        while (running.size >= this.inFlight) await Promise.race(running);
        if (failure || this.cancelRequested) break;
        this.rateLimit?.account(item.bytes);
        start(item);
      }
    } finally {
      await Promise.all(running);
    }
    if (failure) throw failure.error;
    // As in QEMU's jobs, the last bytes take their time at the rate too.
    await this.rateLimit?.wait(() => this.cancelRequested);
    this.checkCancelled();
  }
}

/**
 * Wait until no request is running on the filter, then (in the same tick, so none can start)
 * put its parents back on `below` and close it without touching `below`.
 */
async function removeFilter(layer: BlockLayer, filter: BlockNode, below: BlockNode): Promise<void> {
  while (filter.tracked.size > 0) await Promise.all([...filter.tracked].map(requestDone));
  for (const edge of [...filter.parents]) replaceChildNode(edge, below);
  for (const edge of [...filter.children]) layer.releaseEdge(edge);
  return layer.closeNode(filter);
}
