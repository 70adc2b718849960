/**
 * Synchronous writes to stdout and stderr, in program order.
 *
 * Writing straight to the file descriptor spares every command the creation of
 * process.stdout/stderr: on a pipe that loads Node's net and stream modules, a few milliseconds
 * of a short command's startup. Like qemu-io and qemu-img, which ignore SIGPIPE and the results
 * of their stdio writes, output that cannot be written (a closed pipe, a full disk) is dropped
 * without a message or a change of exit status. A non-blocking descriptor (shared with a
 * parent that set O_NONBLOCK) gets EAGAIN: from then on that stream's output goes through
 * Node's stream, which waits for the descriptor to take it.
 */
import { writeSync } from 'node:fs';
import { qemuStringBytes } from '../byte-strings.js';

interface StdioTarget {
  readonly fd: 1 | 2;
  readonly stream: () => NodeJS.WriteStream;
  /** Node's stream, once the descriptor turned out to be non-blocking. */
  viaStream?: NodeJS.WriteStream;
  /** Writing failed: further output is dropped. */
  broken: boolean;
}

const stdoutTarget: StdioTarget = { fd: 1, stream: () => process.stdout, broken: false };
const stderrTarget: StdioTarget = { fd: 2, stream: () => process.stderr, broken: false };

function writeTo(target: StdioTarget, output: string | Uint8Array): void {
  if (target.broken) return;
  // Text goes out as QEMU's bytes (a JSON \u0000 in a name is C0 80).
  let data = typeof output === 'string' ? qemuStringBytes(output) : output;
  if (target.viaStream) {
    writeToStream(target.viaStream, data);
    return;
  }
  while (data.length > 0) {
    try {
      data = data.subarray(writeSync(target.fd, data));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        const stream = target.stream();
        stream.on('error', () => (target.broken = true));
        target.viaStream = stream;
        writeToStream(stream, data);
      } else {
        target.broken = true;
      }
      return;
    }
  }
}

/** A stream keeps what it is given until the descriptor takes it: a copy, as callers reuse their bytes. */
function writeToStream(stream: NodeJS.WriteStream, data: Uint8Array): void {
  stream.write(Buffer.from(data));
}

export function writeStdout(text: string): void {
  writeTo(stdoutTarget, text);
}

/** Bytes to stdout (large outputs encoded by the caller), which the caller may reuse once this returns. */
export function writeStdoutBytes(bytes: Uint8Array): void {
  writeTo(stdoutTarget, bytes);
}

export function writeStderr(text: string): void {
  writeTo(stderrTarget, text);
}
