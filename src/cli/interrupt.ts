/**
 * Ctrl-C for the long-running commands (stream, commit, mirror, convert): the first SIGINT is a
 * clean cancel, and the message after it says how far the work got and what to do next.
 */

/**
 * Ctrl-C as a clean cancel: the first SIGINT aborts `signal` (a job stops, its images stay
 * consistent); a second one gets Node's default (exit at once). `stop` once the images are
 * closed: a SIGINT that comes after the work, while caches are written back, changes nothing.
 */
export function cancelOnSigint(): { signal: AbortSignal; stop: () => void } {
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  return { signal: controller.signal, stop: () => process.off('SIGINT', onSigint) };
}

const CANCEL_ADVICE = {
  stream: 'the image is consistent and still has its old backing file; run the same command again to finish',
  commit: 'the image is unchanged and its backing file holds part of its data; run the same command again to finish',
  mirror: 'the target is incomplete; run the same command again to start over',
  convert: 'the target is consistent but incomplete: run the same command again to convert it completely',
};

type InterruptibleCommand = keyof typeof CANCEL_ADVICE;

/** What a command stopped by Ctrl-C says: how far it got and what to do. */
export function interruptedMessage(command: InterruptibleCommand, done: number, total: number): string {
  return `${command} interrupted after ${done} of ${total} bytes; ${CANCEL_ADVICE[command]}`;
}
