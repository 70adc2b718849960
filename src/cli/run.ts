/** The last line of defence: any error becomes one `blkio: ...` line and a non-zero exit, never a stack trace. */
import { BlkioError } from '../errors.js';

export const PROGRAM = 'blkio';

/** Print an error the way QEMU's error_report does: `<program>: <message>` plus hint lines. */
export function reportError(e: unknown): void {
  if (e instanceof BlkioError) {
    process.stderr.write(`${PROGRAM}: ${e.message}\n`);
    for (const hint of e.hints) process.stderr.write(`${hint}\n`);
  } else {
    const message = e instanceof Error ? e.message : String(e);
    process.stderr.write(`${PROGRAM}: internal error: ${message}\n`);
  }
}

export async function runCli(run: () => Promise<number>): Promise<number> {
  try {
    return await run();
  } catch (e) {
    reportError(e);
    return 1;
  }
}
