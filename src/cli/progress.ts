/**
 * Progress output for long-running commands (stream, commit, mirror, img convert/commit).
 *
 * Three ways to see progress, all fed by the same `update(done, total)` calls:
 *   - `human` (`-p`): qemu-img's `    (12.34/100%)` redrawn with `\r` on stdout, a newline at
 *     the end; a line is drawn for every update at 0% or 100% and whenever the percentage moved
 *     by more than 1 (either way).
 *   - `json` (`--progress=json`): JSON lines `{"done":N,"total":N,"elapsed_ms":N}` on stderr,
 *     one at the start, one per percent moved (at most every 100 ms), and a last one with
 *     done == total when the work finished.
 *   - SIGUSR1, in any mode: one progress line right away (qemu-img's `    (12.34/100%)` plus a
 *     newline on stderr when `-p` is off; a redraw / an extra JSON line otherwise).
 *
 * Usage:
 *   const progress = new Progress(parseProgressMode(values.progress, values.p));
 *   try { ...; progress.update(done, total); ...; progress.finish(); } finally { progress.dispose(); }
 */
import { BlkioError } from '../errors.js';
import { writeStderr, writeStdout } from './output.js';

export type ProgressMode = 'off' | 'human' | 'json';

/** Where progress goes; stdout/stderr (./output.ts) by default, anything with `write` in tests. */
export interface ProgressSink {
  write(text: string): unknown;
}

export interface ProgressOptions {
  /** Human lines (`-p`); QEMU draws them on stdout. */
  out?: ProgressSink;
  /** JSON lines and SIGUSR1 lines without `-p`. */
  err?: ProgressSink;
  /** Listen for SIGUSR1 (default true; off in tests and libraries). */
  signals?: boolean;
  /** Clock in milliseconds (tests). */
  now?: () => number;
}

/**
 * The mode from `--progress=VALUE` (human|json) and `-p`; `--progress` wins. `quiet` (`-q`)
 * turns human output off, as in qemu-img, but keeps JSON (it is asked for explicitly).
 */
export function parseProgressMode(progressOption: string | undefined, p: boolean | undefined, quiet = false): ProgressMode {
  if (progressOption !== undefined && progressOption !== 'human' && progressOption !== 'json') {
    throw new BlkioError('EINVAL', `Invalid progress format '${progressOption}' (expected human or json)`);
  }
  const mode: ProgressMode = progressOption ?? (p ? 'human' : 'off');
  return mode === 'human' && quiet ? 'off' : mode;
}

/** qemu-img's `%3.2f` percentage. */
function percentText(percent: number): string {
  return `    (${percent.toFixed(2)}/100%)`;
}

const JSON_MIN_INTERVAL_MS = 100;

export class Progress {
  private done = 0;
  private total = 0;
  private lastPercent = -Infinity;
  private lastJsonAt = -Infinity;
  private lastJsonDone = -1;
  private drewHuman = false;
  private readonly started: number;
  private readonly out: ProgressSink;
  private readonly err: ProgressSink;
  private readonly now: () => number;
  private readonly onSignal?: () => void;

  constructor(readonly mode: ProgressMode, options: ProgressOptions = {}) {
    this.out = options.out ?? { write: writeStdout };
    this.err = options.err ?? { write: writeStderr };
    this.now = options.now ?? (() => performance.now());
    this.started = this.now();
    if (options.signals ?? true) {
      this.onSignal = () => this.printOnDemand();
      process.on('SIGUSR1', this.onSignal);
    }
  }

  private percent(): number {
    return this.total > 0 ? Math.min(100, (this.done / this.total) * 100) : 0;
  }

  /** Record progress (bytes done of total); prints when the mode says a line is due. */
  update(done: number, total: number): void {
    this.done = done;
    this.total = total;
    const percent = this.percent();
    if (this.mode === 'human') {
      if (!this.drewHuman || percent === 0 || percent === 100 || Math.abs(percent - this.lastPercent) > 1) this.drawHuman(percent);
    } else if (this.mode === 'json') {
      const due = this.now() - this.lastJsonAt >= JSON_MIN_INTERVAL_MS && percent - this.lastPercent >= 1;
      if (this.lastJsonDone < 0 || due) this.emitJson(percent);
    }
  }

  /**
   * The work completed: the 100% line (human) or the done == total line (json), then a newline.
   * `redrawFull`: draw the 100% line even when it is showing already, as qemu-img convert does.
   */
  finish({ redrawFull = false } = {}): void {
    if (this.mode === 'human') {
      if (redrawFull || this.lastPercent !== 100) this.drawHuman(100);
      this.out.write('\n');
      this.drewHuman = false;
    } else if (this.mode === 'json' && this.lastJsonDone !== this.total) {
      this.done = this.total;
      this.emitJson(100);
    }
  }

  /** Stop listening for SIGUSR1; end a half-drawn human line (after an error or cancel). */
  dispose(): void {
    if (this.onSignal) process.off('SIGUSR1', this.onSignal);
    if (this.drewHuman) this.out.write('\n');
    this.drewHuman = false;
  }

  /** SIGUSR1: one line now, whatever the rate limits say. */
  printOnDemand(): void {
    const percent = this.percent();
    if (this.mode === 'human') this.drawHuman(percent);
    else if (this.mode === 'json') this.emitJson(percent);
    else this.err.write(percentText(percent) + '\n');
  }

  private drawHuman(percent: number): void {
    this.out.write(percentText(percent) + '\r');
    this.lastPercent = percent;
    this.drewHuman = true;
  }

  private emitJson(percent: number): void {
    const now = this.now();
    const elapsed = Math.round(now - this.started);
    this.err.write(`{"done":${this.done},"total":${this.total},"elapsed_ms":${elapsed}}\n`);
    this.lastJsonAt = now;
    this.lastJsonDone = this.done;
    this.lastPercent = percent;
  }
}
