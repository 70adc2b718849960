/**
 * The state one qemu-io interpreter works on: the block layer, the open image (if any), the
 * asynchronous requests in flight, and where its output goes. Every command is a function of
 * a session and its argument vector; nothing is global, so several sessions may run in one
 * process (the demo, tests).
 */
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

  /** Keep an asynchronous request until it completed (aio_flush, close and exit wait for it). */
  track(request: Promise<unknown>): void {
    const done = request.finally(() => this.inflight.delete(done));
    this.inflight.add(done);
  }

  /** Wait for every request in flight, including ones started while waiting. */
  async drain(): Promise<void> {
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
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
 * `<name> failed: <error>` (the command then fails).
 */
export async function timedRequest(session: IoSession, name: string, request: () => Promise<unknown>): Promise<bigint | undefined> {
  const start = process.hrtime.bigint();
  try {
    await request();
  } catch (e) {
    session.print(`${name} failed: ${toBlkioError(e).strerror}`);
    return undefined;
  }
  return process.hrtime.bigint() - start;
}
