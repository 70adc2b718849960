/**
 * `blkio io`: the qemu-io 7.2 compatible interpreter (program options, the image, `-c`
 * commands or commands read from stdin, exit status), and the direct subcommands
 * (`blkio read IMAGE 0 4k`) that run one qemu-io command on an image.
 *
 * blkio extensions: `--blockdev DEF` (repeatable) and `--drive STR` (also `-drive`) build a
 * graph; without an image argument the commands act on `--node NAME`, else on the last drive,
 * else on the last blockdev. `--events` prints the QAPI events QEMU would send to a monitor
 * (quorum's findings) as JSON lines on stderr.
 */
import { BlockLayer } from '../block/graph.js';
import { processObjectArg } from '../block/objects.js';
import { allDrivers } from '../drivers/index.js';
import { toQemuJson } from '../options/json.js';
import type { FlatOptions } from '../options/types.js';
import { getopt, type GetoptSpec, type LongOption } from '../commands/io/getopt.js';
import { IO_COMMANDS, IoSession, runArgv, runCommandLine } from '../commands/io/index.js';
import { applyModeOption, defaultOpenMode, openFile, parseOptionString, type OpenMode } from '../commands/io/open.js';
import { graphImage, openGraph } from './open-graph.js';
import { PROGRAM } from './run.js';

const COMMAND_NAME = `${PROGRAM} io`;
const VERSION = '0.1.0';

const LONG_OPTIONS: readonly LongOption[] = [
  { name: 'help', hasArg: false, key: 'h' },
  { name: 'version', hasArg: false, key: 'V' },
  { name: 'cmd', hasArg: true, key: 'c' },
  { name: 'format', hasArg: true, key: 'f' },
  { name: 'read-only', hasArg: false, key: 'r' },
  { name: 'snapshot', hasArg: false, key: 's' },
  { name: 'nocache', hasArg: false, key: 'n' },
  { name: 'copy-on-read', hasArg: false, key: 'C' },
  { name: 'misalign', hasArg: false, key: 'm' },
  { name: 'native-aio', hasArg: false, key: 'k' },
  { name: 'aio', hasArg: true, key: 'i' },
  { name: 'discard', hasArg: true, key: 'd' },
  { name: 'cache', hasArg: true, key: 't' },
  { name: 'trace', hasArg: true, key: 'T' },
  { name: 'object', hasArg: true, key: 'object' },
  { name: 'image-opts', hasArg: false, key: 'image-opts' },
  { name: 'force-share', hasArg: false, key: 'U' },
  { name: 'blockdev', hasArg: true, key: 'blockdev' },
  { name: 'drive', hasArg: true, key: 'drive' },
  { name: 'node', hasArg: true, key: 'node' },
  { name: 'events', hasArg: false, key: 'events' },
];

const PROGRAM_SPEC: GetoptSpec = { short: 'hVc:d:f:rsnCmki:t:T:U', long: LONG_OPTIONS, singleDashLong: ['drive'] };

function usageText(): string {
  return `Usage: ${COMMAND_NAME} [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See '${COMMAND_NAME} -c help' for information on available commands.

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
`;
}

/** Everything the program options asked for. */
interface ProgramOptions {
  mode: OpenMode;
  commands: string[];
  format?: string;
  blockdevs: string[];
  drives: string[];
  node?: string;
  operands: string[];
}

/** A program exit decided while reading the options (help, version, bad option). */
class ProgramExit {
  constructor(readonly status: number) {}
}

/** A session on a new block layer whose warnings the session prints. */
function newSession(): IoSession {
  const layer = new BlockLayer(allDrivers);
  const session = new IoSession({ layer, commands: IO_COMMANDS, program: PROGRAM });
  layer.warn = (message) => session.warn(message);
  return session;
}

/** Read the program options in order, acting on each as qemu-io does (some exit at once). */
function parseProgramOptions(session: IoSession, argv: string[], spec: GetoptSpec, usage: () => string): ProgramOptions | ProgramExit {
  const result: ProgramOptions = {
    mode: defaultOpenMode(), commands: [], blockdevs: [], drives: [], operands: [],
  };
  const { items, operands } = getopt([PROGRAM, ...argv], spec);
  for (const item of items) {
    if (item.kind === 'error') {
      session.printErr(item.message);
      session.write(usage());
      return new ProgramExit(1);
    }
    switch (item.key) {
      case 'h':
        session.write(usage());
        return new ProgramExit(0);
      case 'V':
        session.print(`${COMMAND_NAME} version ${VERSION}`);
        return new ProgramExit(0);
      case 'c': result.commands.push(item.value); break;
      case 'f': result.format = item.value; break;
      case 'm': session.misalign = true; break;
      case 'T': break; // tracing is QEMU's; accepted and ignored
      case 'image-opts': session.imageOpts = true; break;
      case 'blockdev': result.blockdevs.push(item.value); break;
      case 'drive': result.drives.push(item.value); break;
      case 'node': result.node = item.value; break;
      case 'events': session.layer.emitEvent = (event) => console.error(toQemuJson(event)); break;
      case 'object': {
        let help: string | undefined;
        try {
          help = processObjectArg(session.layer, item.value);
        } catch (e) {
          session.reportError(e);
          return new ProgramExit(1);
        }
        if (help !== undefined) {
          session.write(help);
          return new ProgramExit(0);
        }
        break;
      }
      default: {
        const error = applyModeOption(result.mode, item.key, item.value);
        if (error !== undefined) {
          session.errorReport(error);
          return new ProgramExit(1);
        }
      }
    }
  }
  result.operands = operands;
  return result;
}

/**
 * Open what the options name: the image argument (a file name, or an option string with
 * --image-opts), else the graph of --blockdev/--drive. False when it failed (reported).
 */
async function openProgramImage(session: IoSession, image: string | undefined, opts: ProgramOptions): Promise<boolean> {
  if (opts.blockdevs.length > 0 || opts.drives.length > 0) {
    try {
      const defs = { ...opts, readOnly: opts.mode.readOnly, writethrough: ['writethrough', 'directsync'].includes(opts.mode.cache) };
      const graph = await openGraph(session.layer, defs);
      if (image === undefined) session.image = graphImage(session.layer, graph, defs);
    } catch (e) {
      session.reportError(e);
      return false;
    }
  }
  if (image === undefined) return true;
  const options: FlatOptions = {};
  if (session.imageOpts) {
    if (!parseOptionString(session, image, options, 'keep')) return false;
    return openFile(session, undefined, options, opts.mode);
  }
  if (opts.format !== undefined) options.driver = opts.format;
  return openFile(session, image, options, opts.mode);
}

/** qemu-io reads a command with fgets() into a buffer of this many bytes. */
const LINE_BUFFER_BYTES = 1024;

/**
 * Lines of stdin as qemu-io's fgets() reads them: split at '\n' only (a '\r' stays part of the
 * line), a line of more than 1023 bytes going on as the next one, and a NUL byte ending the
 * line's text.
 */
async function* stdinLines(): AsyncGenerator<string> {
  let pending = Buffer.alloc(0);
  const take = (bytes: number): string => {
    let line = pending.subarray(0, bytes);
    pending = pending.subarray(bytes);
    const nul = line.indexOf(0);
    if (nul >= 0) line = line.subarray(0, nul);
    else if (line.at(-1) === 0x0a) line = line.subarray(0, -1);
    return line.toString('utf8');
  };
  for await (const chunk of process.stdin) {
    pending = Buffer.concat([pending, chunk as Buffer]);
    for (;;) {
      const newline = pending.indexOf(0x0a);
      if (newline >= 0 && newline < LINE_BUFFER_BYTES - 1) yield take(newline + 1);
      else if (pending.length >= LINE_BUFFER_BYTES - 1) yield take(LINE_BUFFER_BYTES - 1);
      else break;
    }
  }
  if (pending.length > 0) yield take(pending.length);
}

/** Run the `-c` commands, or else the commands read from stdin; true if all succeeded. */
async function commandLoop(session: IoSession, commands: string[]): Promise<boolean> {
  let ok = true;
  if (commands.length > 0) {
    for (const command of commands) {
      if (session.quit) break;
      if ((await runCommandLine(session, command)) < 0) ok = false;
    }
    return ok;
  }
  const lines = stdinLines();
  try {
    while (!session.quit) {
      session.write(`${PROGRAM}> `);
      const next = await lines.next();
      if (next.done) break;
      if ((await runCommandLine(session, next.value)) < 0) ok = false;
    }
  } finally {
    await lines.return(undefined);
  }
  return ok;
}

/** After the commands: requests in flight complete, then everything is closed. */
async function finish(session: IoSession): Promise<void> {
  await session.drain();
  await session.closeImage();
  await session.layer.closeAll();
}

export async function runIo(argv: string[]): Promise<number> {
  const session = newSession();
  const opts = parseProgramOptions(session, argv, PROGRAM_SPEC, usageText);
  if (opts instanceof ProgramExit) return opts.status;
  if (opts.operands.length > 1) {
    session.write(usageText());
    return 1;
  }
  if (opts.format !== undefined && session.imageOpts) {
    session.errorReport('--image-opts and -f are mutually exclusive');
    return 1;
  }
  try {
    if (!(await openProgramImage(session, opts.operands[0], opts))) return 1;
    return (await commandLoop(session, opts.commands)) ? 0 : 1;
  } finally {
    await finish(session);
  }
}

function directUsageText(command: string): string {
  return `Usage: ${PROGRAM} ${command} [OPTIONS]... IMAGE [${command} arguments]
Run the ${command} command of '${COMMAND_NAME}' on IMAGE, with the options of '${COMMAND_NAME}'
(see '${COMMAND_NAME} --help') except -c; '${COMMAND_NAME} -c "help ${command}"' explains the arguments.
`;
}

/**
 * Commands that only look at the image: `blkio read|map|alloc|info|length` open it read-only,
 * unless -C asks them to copy what they read into it.
 */
const READ_ONLY_COMMANDS = ['read', 'map', 'alloc', 'info', 'length'];

/**
 * `blkio <command> [program options] IMAGE [command arguments]`: the same output and exit
 * status as `qemu-io -c '<command> <arguments>' IMAGE`.
 */
export async function runDirect(command: string, argv: string[]): Promise<number> {
  const session = newSession();
  const spec: GetoptSpec = {
    ...PROGRAM_SPEC, short: 'hVd:f:rsnCmki:t:T:U', long: LONG_OPTIONS.filter((o) => o.key !== 'c'), stopAtOperand: true,
  };
  const opts = parseProgramOptions(session, argv, spec, () => directUsageText(command));
  if (opts instanceof ProgramExit) return opts.status;
  if (READ_ONLY_COMMANDS.includes(command) && !opts.mode.copyOnRead) opts.mode.readOnly = true;
  const usesGraph = opts.blockdevs.length > 0 || opts.drives.length > 0;
  const image = usesGraph ? undefined : opts.operands[0];
  const args = usesGraph ? opts.operands : opts.operands.slice(1);
  if (!usesGraph && image === undefined) {
    session.errorReport(`an image is required: ${PROGRAM} ${command} [options] IMAGE [${command} arguments]`);
    return 1;
  }
  try {
    if (!(await openProgramImage(session, image, opts))) return 1;
    return (await runArgv(session, [command, ...args])) < 0 ? 1 : 0;
  } finally {
    await finish(session);
  }
}
