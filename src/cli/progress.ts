/**
 * Progress output for long-running commands (stream, commit, mirror, img convert/commit).
 *
 * Three ways to see progress, all fed by the same `update(done, total)` calls:
 *   - `human` (`-p`): qemu-img's `    (12.34/100%)` redrawn with `\r` on stdout (a pipe or a
 *     file gets the same bytes as a terminal), a newline at the end; a line is drawn for every
 *     update at 0% or 100% and whenever the percentage moved away from the last line's, either
 *     way, by more than the subcommand's `minSkip` (amend's steps start over from near 0%). The
 *     percentage is a C float, as in qemu-img, printed as glibc does.
 *   - `json` (`--progress=json`): JSON lines `{"done":N,"total":N,"elapsed_ms":N}` on stderr,
 *     one at the start, one per percent moved (at most every 100 ms), and a last one with
 *     done == total when the work finished.
 *   - SIGUSR1: without `-p`, qemu-img's `    (12.34/100%)` plus a newline on stderr at the next
 *     update a `-p` line would be drawn for; with `-p` nothing (qemu-img blocks the signal);
 *     with JSON an extra line right away.
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
  /** qemu-img's `min_skip` in percent: 1 for convert, commit and amend, 2 for rebase and compare. */
  minSkip?: number;
  /** The percentage of done/total as the subcommand computes it (default: `convertPercent`). */
  percentOf?: (done: number, total: number) => number;
}

const f32 = Math.fround;

/** `100.0 * done / total` in double, stored in a float: convert, and the default. */
export function convertPercent(done: number, total: number): number {
  return total > 0 ? f32((100 * done) / total) : 0;
}

/** `(float)done / total * 100.f`, all in float: a block job's progress (commit), compare's steps. */
export function floatPercent(done: number, total: number): number {
  return total > 0 ? f32(f32(f32(done) / f32(total)) * 100) : 0;
}

/** The amend callback's `100.f * offset / total`, all in float. */
export function amendPercent(done: number, total: number): number {
  return total > 0 ? f32(f32(100 * f32(done)) / f32(total)) : 0;
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

/**
 * qemu-img's `%3.2f` percentage. glibc rounds an exact tie to even where toFixed rounds it up;
 * at two decimals the only exact ties are odd multiples of 1/8 (3.125 prints as 3.12).
 */
export function percentText(percent: number): string {
  const eighths = percent * 8;
  let text = percent.toFixed(2);
  if (Number.isInteger(eighths) && eighths % 2 !== 0) {
    const hundredths = Math.floor(percent * 100);
    text = ((hundredths % 2 === 0 ? hundredths : hundredths + 1) / 100).toFixed(2);
  }
  return `    (${text}/100%)`;
}

const JSON_MIN_INTERVAL_MS = 100;

export class Progress {
  private done = 0;
  private total = 0;
  private percent = 0;
  /** qemu-img's `last_print`: where the last line (or the line a signal waited for) was due. */
  private lastDue = 0;
  private lastJsonPercent = -Infinity;
  private lastJsonAt = -Infinity;
  private lastJsonDone = -1;
  private drewHuman = false;
  private signalPending = false;
  private readonly started: number;
  private readonly out: ProgressSink;
  private readonly err: ProgressSink;
  private readonly now: () => number;
  private readonly minSkip: number;
  private readonly percentOf: (done: number, total: number) => number;
  private readonly onSignal?: () => void;

  constructor(readonly mode: ProgressMode, options: ProgressOptions = {}) {
    this.out = options.out ?? { write: writeStdout };
    this.err = options.err ?? { write: writeStderr };
    this.now = options.now ?? (() => performance.now());
    this.minSkip = options.minSkip ?? 1;
    this.percentOf = options.percentOf ?? convertPercent;
    this.started = this.now();
    if (options.signals ?? true) {
      // Listening even with -p, where the signal is ignored: unheard, SIGUSR1 starts Node's inspector.
      this.onSignal = () => this.printOnDemand();
      process.on('SIGUSR1', this.onSignal);
    }
  }

  /** Record progress (bytes done of total); prints when the mode says a line is due. */
  update(done: number, total: number): void {
    this.done = done;
    this.total = total;
    this.show(this.percentOf(done, total));
  }

  /** qemu-img's relative report (rebase, compare): `delta` more percent done, summed in float. */
  advance(delta: number): void {
    this.show(f32(this.percent + f32(f32(delta / 100) * 100)));
  }

  private show(percent: number): void {
    this.percent = Math.min(100, percent);
    if (this.mode === 'json') {
      const due = this.now() - this.lastJsonAt >= JSON_MIN_INTERVAL_MS && this.percent - this.lastJsonPercent >= 1;
      if (this.lastJsonDone < 0 || due) this.emitJson();
    } else if (this.percent > f32(this.lastDue + this.minSkip) || this.percent < f32(this.lastDue - this.minSkip)
      || this.percent === 0 || this.percent === 100) {
      this.lineDue();
    }
  }

  /**
   * The work completed: the 100% line (human) or the done == total line (json), then a newline.
   * `redrawFull`: draw the 100% line even when it is showing already, as qemu-img does.
   */
  finish({ redrawFull = false } = {}): void {
    if (this.mode === 'json') {
      if (this.lastJsonDone !== this.total) {
        this.done = this.total;
        this.emitJson();
      }
      return;
    }
    const showing = this.drewHuman && this.percent === 100;
    this.percent = 100;
    if (redrawFull || !showing) this.lineDue();
    if (this.mode === 'human') {
      this.out.write('\n');
      this.drewHuman = false;
    }
  }

  /** qemu-img's end of progress: with -p a newline, whether or not a line was drawn. */
  end(): void {
    if (this.mode === 'human') this.out.write('\n');
    this.drewHuman = false;
  }

  /** Stop listening for SIGUSR1; end a half-drawn human line (after an error or cancel). */
  dispose(): void {
    if (this.onSignal) process.off('SIGUSR1', this.onSignal);
    if (this.drewHuman) this.out.write('\n');
    this.drewHuman = false;
  }

  /** SIGUSR1: a line at the next due update without -p, an extra JSON line now, nothing with -p. */
  printOnDemand(): void {
    if (this.mode === 'json') this.emitJson();
    else if (this.mode === 'off') this.signalPending = true;
  }

  private lineDue(): void {
    this.lastDue = this.percent;
    if (this.mode === 'human') {
      this.out.write(percentText(this.percent) + '\r');
      this.drewHuman = true;
    } else if (this.signalPending) {
      this.err.write(percentText(this.percent) + '\n');
      this.signalPending = false;
    }
  }

  private emitJson(): void {
    const now = this.now();
    const elapsed = Math.round(now - this.started);
    this.err.write(`{"done":${this.done},"total":${this.total},"elapsed_ms":${elapsed}}\n`);
    this.lastJsonAt = now;
    this.lastJsonDone = this.done;
    this.lastJsonPercent = this.percent;
  }
}
