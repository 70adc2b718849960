/**
 * What qemu-io prints about a finished request: the two-line statistics report (or the `-C`
 * CSV line) with its time formats, and the `-v` hexdump. Pure functions returning text.
 */
import { cvtstr, formatFixed } from '../../options/size.js';

/** Elapsed time as qemu-io measures it, in nanoseconds (CLOCK_MONOTONIC differences). */
export type Nanoseconds = bigint;

const NS_PER_SEC = 1_000_000_000n;

/**
 * qemu-io's timestr: below one second `SS.ss sec` (`00.00 sec`), otherwise `H:MM:SS.ss`;
 * the CSV form always uses `H:MM:SS.ss`.
 */
export function timestr(elapsed: Nanoseconds, alwaysHours: boolean): string {
  const seconds = elapsed / NS_PER_SEC;
  const fraction = Number(elapsed % NS_PER_SEC) / 1e9;
  if (!alwaysHours && seconds === 0n) return `${formatFixed(fraction, 2).padStart(5, '0')} sec`;
  const hours = seconds / 3600n;
  const minutes = (seconds % 3600n) / 60n;
  const secs = formatFixed(Number(seconds % 60n) + fraction, 2).padStart(5, '0');
  return `${hours}:${String(minutes).padStart(2, '0')}:${secs}`;
}

/** value per second of `elapsed` (C division: may be infinite for a zero time). */
function perSecond(value: number, elapsed: Nanoseconds): number {
  const seconds = Number(elapsed / NS_PER_SEC) + Number(elapsed % NS_PER_SEC) / 1e9;
  return value / seconds;
}

export interface RequestReport {
  /** `read`, `wrote` or `discard`. */
  op: string;
  offset: number;
  /** Bytes asked for. */
  count: number;
  /** Bytes done. */
  total: number;
  elapsed: Nanoseconds;
  /** `-C`: one machine-parsable line instead of the two human ones. */
  csv: boolean;
}

/** print_report: the lines (each ending in a newline) for one finished request. */
export function formatReport(r: RequestReport): string {
  const ops = 1;
  const bytesPerSec = perSecond(r.total, r.elapsed);
  const opsPerSec = perSecond(ops, r.elapsed);
  if (r.csv) {
    return `${r.total},${ops},${timestr(r.elapsed, true)},${formatFixed(bytesPerSec, 3)},${formatFixed(opsPerSec, 3)}\n`;
  }
  return `${r.op} ${r.total}/${r.count} bytes at offset ${r.offset}\n` +
    `${cvtstr(r.total)}, ${ops} ops; ${timestr(r.elapsed, false)} (${cvtstr(bytesPerSec)}/sec and ${formatFixed(opsPerSec, 4)} ops/sec)\n`;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0') + ' ');
const PRINTABLE = Array.from({ length: 256 }, (_, i) => (/^[A-Za-z0-9]$/.test(String.fromCharCode(i)) ? String.fromCharCode(i) : '.'));

/**
 * `-v`: 16 bytes a line, `%08x:  ` with the file offset, `%02x ` per byte, a space, then each
 * byte as itself if alphanumeric, else `.`; the last line is not padded.
 */
export function hexdump(buf: Uint8Array, offset: number): string {
  const lines: string[] = [];
  for (let i = 0; i < buf.length; i += 16) {
    const row = buf.subarray(i, Math.min(i + 16, buf.length));
    let hex = '';
    let text = '';
    for (const byte of row) {
      hex += HEX[byte];
      text += PRINTABLE[byte];
    }
    lines.push(`${(offset + i).toString(16).padStart(8, '0')}:  ${hex} ${text}\n`);
  }
  return lines.join('');
}
