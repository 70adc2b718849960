/**
 * The state one qemu-io interpreter works on: the block layer, the open image (if any), the
 * asynchronous requests in flight, and where its output goes. Every command is a function of
 * a session and its argument vector; nothing is global, so several sessions may run in one
 * process (the demo, tests).
 */
import { setImmediate } from 'node:timers/promises';
import { BlkioError, toBlkioError } from '../../errors.js';
import type { BlockBackend } from '../../block/backend.js';
import { REQ_FUA } from '../../block/flags.js';
import type { BlockLayer } from '../../block/graph.js';
import type { BlockNode } from '../../block/node.js';
import { visibleNode } from '../../block/describe.js';
import type { OpenedImage } from '../../cli/open-image.js';
import { writeStderr, writeStdout } from '../../cli/output.js';

/** Where a session writes; both are expected to write synchronously (lines stay in order). */
export interface IoStreams {
  stdout(text: string): void;
  stderr(text: string): void;
}

export const processStreams: IoStreams = {
  stdout: writeStdout,
  stderr: writeStderr,
};

/**
 * How an asynchronous request ended, which decides when qemu-io reports it: `failed` before
 * any I/O, or a `read` or `write` that reached the image.
 */
export type AioCompletionKind = 'failed' | 'read' | 'write';

/** A finished asynchronous request and the output it recorded, waiting to be reported. */
interface AioCompletion {
  /** Order of submission. */
  order: number;
  kind: AioCompletionKind;
  output: Array<{ toStderr: boolean; text: string }>;
}

/** Reported when a synchronous request finishes; writes wait for aio_flush, sleep or close. */
const POLLED_KINDS: readonly AioCompletionKind[] = ['failed', 'read'];
const ALL_KINDS: readonly AioCompletionKind[] = ['failed', 'read', 'write'];

/** One entry of the command table (QEMU's cmdinfo_t). */
export interface IoCommand {
  name: string;
  /** One-letter alias (`r` for read). */
  altname?: string;
  argmin: number;
  /** -1: no upper limit. */
  argmax: number;
  /** Runs even when no image is open (open, sleep, abort, sigraise). */
  noFileOk?: boolean;
  /** Runs regardless of the open image and never checks it (help, quit). */
  global?: boolean;
  /** Permissions (PERM_*) the root user must hold first (write: WRITE). */
  perm?: number;
  /** The argument synopsis; undefined prints nothing (C's NULL). */
  args?: string;
  oneline: string;
  /** Extended help of `help <cmd>`, printed after the one-line summary. */
  help?: string;
  /** argv[0] is the name as typed. Negative: the command failed (the exit status becomes 1). */
  run(session: IoSession, argv: string[]): Promise<number>;
}

export interface IoSessionOptions {
  layer: BlockLayer;
  /** The command table (help lists it). */
  commands: readonly IoCommand[];
  /** Program name for `<program>: message` lines. */
  program: string;
  streams?: IoStreams;
}

export class IoSession {
  readonly layer: BlockLayer;
  readonly commands: readonly IoCommand[];
  /** `--image-opts`: `open` takes an option string instead of a file name. */
  imageOpts: boolean;
  /** `-m`: buffers start 16 bytes into an allocation. */
  misalign: boolean;
  image: OpenedImage | undefined;
  /** Set by `quit`: no further commands run. */
  quit = false;
  private readonly program: string;
  private readonly streams: IoStreams;
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly completions: AioCompletion[] = [];
  private aioCount = 0;

  constructor(options: IoSessionOptions) {
    this.layer = options.layer;
    this.commands = options.commands;
    this.program = options.program;
    this.streams = options.streams ?? processStreams;
    this.imageOpts = false;
    this.misalign = false;
  }

  /** A line on stdout (most command output, including many errors). */
  print(line: string): void {
    this.streams.stdout(line + '\n');
  }

  /** Text on stdout as is. */
  write(text: string): void {
    this.streams.stdout(text);
  }

  /** A line on stderr without prefix (getopt messages, `no file open`, ...). */
  printErr(line: string): void {
    this.streams.stderr(line + '\n');
  }

  /** error_report: `<program>: <message>` on stderr. */
  errorReport(message: string): void {
    this.printErr(`${this.program}: ${message}`);
  }

  /** error_report_err: an error's message with its prefix, then its hint lines. */
  reportError(e: unknown): void {
    if (e instanceof BlkioError) {
      this.errorReport(e.message);
      for (const hint of e.hints) this.printErr(hint);
    } else {
      this.errorReport(`internal error: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** warn_report (`warning: ...` gets the program prefix); QEMU's probing notice carries its own `WARNING:`. */
  warn(message: string): void {
    this.printErr(message.startsWith('WARNING:') ? message : `${this.program}: ${message}`);
  }

  get blk(): BlockBackend {
    if (!this.image) throw new BlkioError('ENOMEDIUM');
    return this.image.blk;
  }

  /** The node the image's commands talk about: the root, looking through implicit filters. */
  get node(): BlockNode {
    return visibleNode(this.blk.node);
  }

  /** Request flags every write carries: FUA in writethrough mode. */
  get writeFlags(): number {
    return this.image?.writethrough ? REQ_FUA : 0;
  }

  /**
   * Start an asynchronous request (aio_read, aio_write). `start` runs it on a session whose
   * output is recorded and resolves to the request's kind of completion; the recording is
   * printed when the session reports completions.
   */
  startAio(start: (out: IoSession) => Promise<AioCompletionKind>): void {
    const completion: AioCompletion = { order: this.aioCount++, kind: 'failed', output: [] };
    const out = new IoSession({
      layer: this.layer,
      commands: this.commands,
      program: this.program,
      streams: {
        stdout: (text) => completion.output.push({ toStderr: false, text }),
        stderr: (text) => completion.output.push({ toStderr: true, text }),
      },
    });
    out.image = this.image;
    out.misalign = this.misalign;
    const done: Promise<void> = start(out).catch((e: unknown) => {
      out.reportError(e);
      return 'failed' as const;
    }).then((kind) => {
      completion.kind = kind;
      this.completions.push(completion);
      this.inflight.delete(done);
    });
    this.inflight.add(done);
  }

  /**
   * Print the completed requests of the given kinds in the order qemu-io reports requests
   * that finished by the time its main loop polls: its thread pool hands them back newest
   * first, requests that failed before any I/O (bottom halves) come before them, and writes,
   * slower than reads there, after the reads (a write started before a read reports after it).
   */
  private releaseCompletions(kinds: readonly AioCompletionKind[]): void {
    for (const kind of kinds) {
      const ready = this.completions.filter((c) => c.kind === kind).sort((a, b) => b.order - a.order);
      for (const completion of ready) {
        this.completions.splice(this.completions.indexOf(completion), 1);
        for (const { toStderr, text } of completion.output) (toStderr ? this.streams.stderr : this.streams.stdout)(text);
      }
    }
  }

  /** What qemu-io's main loop reports while it waits for a synchronous request. */
  async pollCompletions(): Promise<void> {
    // One turn of the event loop lets requests that are about to finish finish.
    if (this.inflight.size > 0) await setImmediate();
    this.releaseCompletions(POLLED_KINDS);
  }

  /** `sleep` and draining let every request that finished meanwhile report. */
  reportCompletions(): void {
    this.releaseCompletions(ALL_KINDS);
  }

  /** Wait for every request in flight, including ones started while waiting, and report them. */
  async drain(): Promise<void> {
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
    this.reportCompletions();
  }

  /** Drop the image: wait for its requests, detach the root user, close what nobody else uses. */
  async closeImage(): Promise<void> {
    const image = this.image;
    if (!image) return;
    await this.drain();
    this.image = undefined;
    const root = image.blk.node;
    image.blk.detach();
    if (root.parents.length === 0) await this.layer.closeNode(root);
  }
}

/** qemuio_command_usage: `<name> <args> -- <oneline>` on stdout; the command fails. */
export function usage(session: IoSession, command: IoCommand): number {
  session.print(`${command.name} ${command.args ?? '(null)'} -- ${command.oneline}`);
  return -1;
}

/** A command option getopt refused: its message on stderr, then the usage; the command fails. */
export function badOption(session: IoSession, command: IoCommand, message: string): number {
  session.printErr(message);
  return usage(session, command);
}

/**
 * One request of a command, timed: the nanoseconds it took, or undefined after printing
 * `<name> failed: <error>` (the command then fails). Asynchronous requests that finished
 * meanwhile report first, as qemu-io's main loop runs while it waits.
 */
export async function timedRequest(session: IoSession, name: string, request: () => Promise<unknown>): Promise<bigint | undefined> {
  const start = process.hrtime.bigint();
  try {
    await request();
  } catch (e) {
    await session.pollCompletions();
    session.print(`${name} failed: ${toBlkioError(e).strerror}`);
    return undefined;
  }
  const elapsed = process.hrtime.bigint() - start;
  await session.pollCompletions();
  return elapsed;
}
