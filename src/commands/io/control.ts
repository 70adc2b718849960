/** Commands about the interpreter itself: `help`, `quit`, `sleep`, `abort`, `sigraise`. */
import { setTimeout as delay } from 'node:timers/promises';
import { parseNum, strtolWhole } from './args.js';
import { lazyBuiltin } from '../../lazy-builtin.js';
import type { IoCommand, IoSession } from './session.js';

/** `<name> <args> -- <oneline>`, the name as the user typed it. */
function helpOneline(session: IoSession, name: string, command: IoCommand): void {
  session.print(`${name} ${command.args !== undefined ? command.args + ' ' : ''}-- ${command.oneline}`);
}

export function findCommand(commands: readonly IoCommand[], name: string): IoCommand | undefined {
  return commands.find((c) => c.name === name || c.altname === name);
}

export const helpCommand: IoCommand = {
  name: 'help',
  altname: '?',
  argmin: 0,
  argmax: 1,
  global: true,
  args: '[command]',
  oneline: 'help for one or all commands',
  async run(session, argv) {
    if (argv.length === 1) {
      for (const command of session.commands) helpOneline(session, command.name, command);
      session.write("\nUse 'help commandname' for extended help.\n");
      return 0;
    }
    const command = findCommand(session.commands, argv[1]);
    if (!command) {
      session.print(`command ${argv[1]} not found`);
      return -1;
    }
    helpOneline(session, argv[1], command);
    if (command.help) session.write(command.help);
    return 0;
  },
};

export const quitCommand: IoCommand = {
  name: 'quit',
  altname: 'q',
  argmin: 0,
  argmax: -1,
  global: true,
  oneline: 'exit the program',
  async run(session) {
    session.quit = true;
    return 0;
  },
};

/** setTimeout's limit; longer sleeps wait in several steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const NS_PER_MS = 1_000_000n;

/**
 * How long `sleep ms` waits, in milliseconds. qemu-io sets a timer at host-clock nanoseconds
 * plus ms * 10^6 in 64-bit arithmetic that wraps, so a huge ms can land in the past (no wait)
 * or anywhere in the future.
 */
export function sleepDuration(ms: bigint, nowNs: bigint): number {
  const expiry = BigInt.asIntN(64, nowNs + BigInt.asIntN(64, ms * NS_PER_MS));
  return expiry <= nowNs ? 0 : Number((expiry - nowNs) / NS_PER_MS);
}

export const sleepCommand: IoCommand = {
  name: 'sleep',
  argmin: 1,
  argmax: 1,
  noFileOk: true,
  oneline: 'waits for the given value in milliseconds',
  async run(session, argv) {
    const ms = strtolWhole(argv[1]);
    if (ms === undefined || ms < 0n) {
      session.print(`${argv[1]} is not a valid number`);
      return -1;
    }
    const nowNs = BigInt(Date.now()) * NS_PER_MS;
    // Requests in flight complete meanwhile, as in QEMU's main loop; they report when it ends.
    for (let left = sleepDuration(ms, nowNs); left > 0; left -= MAX_TIMER_MS) await delay(Math.min(left, MAX_TIMER_MS));
    session.reportCompletions();
    return 0;
  },
};

export const abortCommand: IoCommand = {
  name: 'abort',
  argmin: 0,
  argmax: 0,
  noFileOk: true,
  oneline: 'simulate a program crash using abort(3)',
  async run() {
    // Raised rather than process.abort(), which would print Node's stack traces first.
    process.kill(process.pid, 'SIGABRT');
    return 0; // not reached: SIGABRT ends the process as it is sent
  },
};

/** The number of signals on Linux (NSIG): larger numbers cannot be signals. */
const NSIG = 65;

/** Loaded by sigraise alone: node:os would cost every qemu-io session 0.3 MiB at startup. */
const os = lazyBuiltin<typeof import('node:os')>('node:os');

/**
 * Signals that leave qemu-io running: its main loop blocks SIGBUS, SIGUSR1, SIGALRM and SIGIO
 * (it reads them from a signalfd), and glibc's raise() refuses its internal signal 32.
 * Node would die of most of them, and SIGUSR1 would start its inspector.
 */
const SIGNALS_QEMU_IO_BLOCKS = new Set([7, 10, 14, 29, 32]);

/** Node ignores SIGXFSZ; qemu-io leaves it at its default action, which ends the process. */
function restoreDefaultAction(signal: number): void {
  if (signal !== os().constants.signals.SIGXFSZ) return;
  // Removing the last listener makes libuv set the action back to SIG_DFL.
  const ignore = (): void => {};
  process.on('SIGXFSZ', ignore);
  process.off('SIGXFSZ', ignore);
}

export const sigraiseCommand: IoCommand = {
  name: 'sigraise',
  argmin: 1,
  argmax: 1,
  noFileOk: true,
  args: 'signal',
  oneline: 'raises a signal',
  help: `
 raises the given signal

 Example:
 'sigraise 15' - raises SIGTERM

 Invokes raise(signal), where "signal" is the mandatory integer argument
 given to sigraise.

`,
  async run(session, argv) {
    const signal = parseNum(session, argv[1]);
    if (signal === undefined) return -1;
    if (signal > NSIG) {
      session.print(`signal argument '${argv[1]}' is too large to be a valid signal`);
      return -1;
    }
    if (SIGNALS_QEMU_IO_BLOCKS.has(signal)) return 0;
    restoreDefaultAction(signal);
    try {
      process.kill(process.pid, signal);
    } catch {
      // raise() of an invalid signal number fails, and qemu-io ignores that.
    }
    return 0;
  },
};
