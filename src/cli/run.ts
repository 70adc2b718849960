/** The last line of defence: any error becomes one `blkio: ...` line and a non-zero exit, never a stack trace. */
import { BlkioError } from '../errors.js';
import { writeStderr } from './output.js';

export const PROGRAM = 'blkio';

/** Print an error the way QEMU's error_report does: `<program>: <message>` plus hint lines. */
export function reportError(e: unknown): void {
  if (e instanceof BlkioError) {
    writeStderr(`${PROGRAM}: ${e.message}\n`);
    for (const hint of e.hints) writeStderr(`${hint}\n`);
  } else {
    const message = e instanceof Error ? e.message : String(e);
    writeStderr(`${PROGRAM}: internal error: ${message}\n`);
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
