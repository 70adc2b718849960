/**
 * The qemu-io command table and dispatch: a command line is split on single spaces, the
 * command found by name or alias, then checked the way qemu-io does before it runs (an open
 * image, the argument count, the permissions it needs).
 */
import { aioFlushCommand, aioReadCommand, aioWriteCommand } from './aio.js';
import { allocCommand, mapCommand } from './allocation.js';
import { breakCommand, removeBreakCommand, resumeCommand, waitBreakCommand } from './breakpoints.js';
import { abortCommand, findCommand, helpCommand, quitCommand, sigraiseCommand, sleepCommand } from './control.js';
import { discardCommand, flushCommand, infoCommand, lengthCommand, truncateCommand } from './image.js';
import { closeCommand, openCommand } from './open.js';
import { readCommand, readvCommand } from './read.js';
import { reopenCommand } from './reopen.js';
import { writeCommand, writevCommand } from './write.js';
import type { IoCommand, IoSession } from './session.js';

export { IoSession, type IoCommand, type IoStreams } from './session.js';

/** Every command, sorted by name in byte order as qemu-io sorts its table (help lists it so). */
export const IO_COMMANDS: readonly IoCommand[] = [
  readCommand, readvCommand, writeCommand, writevCommand, aioReadCommand, aioWriteCommand, aioFlushCommand,
  flushCommand, truncateCommand, lengthCommand, infoCommand, discardCommand, allocCommand, mapCommand,
  reopenCommand, breakCommand, removeBreakCommand, resumeCommand, waitBreakCommand, abortCommand,
  sleepCommand, sigraiseCommand, helpCommand, quitCommand, openCommand, closeCommand,
].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

/** qemu-io's breakline: fields separated by single spaces, empty fields dropped (no quoting). */
export function splitCommandLine(line: string): string[] {
  return line.split(' ').filter((field) => field !== '');
}

function argumentCountError(command: IoCommand, typed: string, argc: number): string {
  const expected = command.argmax === -1
    ? `at least ${command.argmin}`
    : command.argmin === command.argmax
      ? `${command.argmin}`
      : `between ${command.argmin} and ${command.argmax}`;
  return `bad argument count ${argc} to ${typed}, expected ${expected} arguments`;
}

/** Run one command line; negative when the command failed. */
export function runCommandLine(session: IoSession, line: string): Promise<number> {
  const argv = splitCommandLine(line);
  return argv.length === 0 ? Promise.resolve(0) : runArgv(session, argv);
}

/** Run a command given as an argument vector (argv[0] is the command's name or alias). */
export async function runArgv(session: IoSession, argv: string[]): Promise<number> {
  const command = findCommand(session.commands, argv[0]);
  if (!command) {
    session.printErr(`command "${argv[0]}" not found`);
    return -1;
  }
  if (!command.global && !command.noFileOk && !session.image) {
    session.printErr("no file open, try 'help open'");
    return -1;
  }
  const argc = argv.length - 1;
  if (argc < command.argmin || (command.argmax !== -1 && argc > command.argmax)) {
    session.printErr(argumentCountError(command, argv[0], argc));
    return -1;
  }
  if (command.perm && session.image) {
    try {
      session.blk.requirePerms(command.perm);
    } catch (e) {
      session.reportError(e);
      return -1;
    }
  }
  return command.run(session, argv);
}
