/** Ctrl-C for long-running commands: the first SIGINT cancels until stopped; the texts after it. */
import { describe, expect, it } from 'vitest';
import { cancelOnSigint, interruptedMessage } from '../../../src/cli/interrupt.js';

describe('cancelOnSigint', () => {
  it('aborts the signal on SIGINT and listens no more once stopped', () => {
    const listeners = process.listenerCount('SIGINT');
    const sigint = cancelOnSigint();
    expect(process.listenerCount('SIGINT')).toBe(listeners + 1);
    process.emit('SIGINT');
    expect(sigint.signal.aborted).toBe(true);
    expect(process.listenerCount('SIGINT')).toBe(listeners);

    const unused = cancelOnSigint();
    unused.stop();
    expect(process.listenerCount('SIGINT')).toBe(listeners);
    expect(unused.signal.aborted).toBe(false);
  });
});

describe('interruptedMessage', () => {
  it('says how far the command got and what to do', () => {
    expect(interruptedMessage('convert', 65536, 1048576)).toBe('convert interrupted after 65536 of 1048576 bytes; ' +
      'the target is consistent but incomplete: run the same command again to convert it completely');
    expect(interruptedMessage('mirror', 0, 512)).toBe(
      'mirror interrupted after 0 of 512 bytes; the target is incomplete; run the same command again to start over');
  });
});
