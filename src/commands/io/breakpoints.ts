/**
 * `break`, `remove_break`, `resume`, `wait_break`: blkdebug's request breakpoints. The first
 * node down the primary-child chain whose driver implements the hook answers; without one the
 * command fails with ENOTSUP, as on any image without a blkdebug node.
 */
import { errno, toBlkioError } from '../../errors.js';
import type { BlockNode } from '../../block/node.js';
import type { IoCommand, IoSession } from './session.js';

type BreakpointHook = 'debugBreakpoint' | 'debugRemoveBreakpoint' | 'debugResume' | 'debugIsSuspended';

/** A breakpoint command's failure: `<what>: <error>`; the command fails. */
function hookFailed(session: IoSession, what: string, error: unknown): number {
  session.print(`${what}: ${toBlkioError(error).strerror}`);
  return -1;
}

/**
 * Run a breakpoint hook on the session's image; when it fails, or nobody implements it, print
 * `<what>: <error>` and fail.
 */
function runHook(
  session: IoSession, what: string, hook: Exclude<BreakpointHook, 'debugIsSuspended'>, ...args: [string] | [string, string]
): number {
  const target = session.blk.node.primaryNodeWith(hook);
  try {
    if (!target) throw errno('ENOTSUP');
    (target.driver[hook] as (n: BlockNode, ...a: string[]) => void)(target, ...args);
    return 0;
  } catch (e) {
    return hookFailed(session, what, e);
  }
}

export const breakCommand: IoCommand = {
  name: 'break',
  argmin: 2,
  argmax: 2,
  args: 'event tag',
  oneline: 'sets a breakpoint on event and tags the stopped request as tag',
  async run(session, argv) {
    return runHook(session, 'Could not set breakpoint', 'debugBreakpoint', argv[1], argv[2]);
  },
};

export const removeBreakCommand: IoCommand = {
  name: 'remove_break',
  argmin: 1,
  argmax: 1,
  args: 'tag',
  oneline: 'remove a breakpoint by tag',
  async run(session, argv) {
    return runHook(session, `Could not remove breakpoint ${argv[1]}`, 'debugRemoveBreakpoint', argv[1]);
  },
};

export const resumeCommand: IoCommand = {
  name: 'resume',
  argmin: 1,
  argmax: 1,
  args: 'tag',
  oneline: 'resumes the request tagged as tag',
  async run(session, argv) {
    return runHook(session, 'Could not resume request', 'debugResume', argv[1]);
  },
};

/** How often wait_break looks for the suspended request while other requests progress. */
const POLL_MS = 1;

export const waitBreakCommand: IoCommand = {
  name: 'wait_break',
  argmin: 1,
  argmax: 1,
  args: 'tag',
  oneline: 'waits for the suspension of a request',
  async run(session, argv) {
    const target = session.blk.node.primaryNodeWith('debugIsSuspended');
    if (!target) {
      // QEMU waits forever here; a request can only be suspended by a node with breakpoints.
      return hookFailed(session, 'Could not wait for breakpoint', errno('ENOTSUP'));
    }
    while (!target.driver.debugIsSuspended!(target, argv[1])) await new Promise((r) => setTimeout(r, POLL_MS));
    return 0;
  },
};
