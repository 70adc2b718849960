/**
 * Argument values of qemu-io commands: sizes (cvtnum, with qemu-io's error lines), pattern
 * bytes and integers read with C's strtol(), and the request size limit.
 */
import { cvtnumErrorText, parseSizeBigInt, scanUnsigned, SizeError } from '../../options/size.js';
import { REQUEST_MAX_BYTES } from '../../block/flags.js';
import { badOption, usage, type IoCommand, type IoSession } from './session.js';
import { getopt, type GetoptSpec } from './getopt.js';

const INT64_MAX = (1n << 63n) - 1n;
const INT64_MIN = -(1n << 63n);

/**
 * cvtnum: a byte count or offset up to INT64_MAX, exactly. On failure prints qemu-io's
 * `Parsing error` line naming `shown` (the argument itself, except where qemu-io names
 * another one) and returns undefined.
 */
export function parseNumExact(session: IoSession, text: string, shown = text): bigint | undefined {
  try {
    const value = parseSizeBigInt(text, 'B', (message) => session.warn(message));
    if (value > INT64_MAX) throw new SizeError('ERANGE', text);
    return value;
  } catch (e) {
    session.print(cvtnumErrorText(shown, e));
    return undefined;
  }
}

/**
 * cvtnum as a number. Values beyond 2^53 come back rounded: they are only ever compared
 * with limits or refused by the block layer as out of range.
 */
export function parseNum(session: IoSession, text: string, shown = text): number | undefined {
  const value = parseNumExact(session, text, shown);
  return value === undefined ? undefined : Number(value);
}

/** C strtol(text, &end, 0) with the requirement that it consumes everything; undefined otherwise. */
export function strtolWhole(text: string): bigint | undefined {
  const scanned = scanUnsigned(text, 0);
  if (!scanned) return text === '' ? 0n : undefined;
  if (scanned.end !== text.length) return undefined;
  const value = scanned.negative ? -scanned.value : scanned.value;
  // strtol saturates at LONG_MIN/LONG_MAX.
  return value > INT64_MAX ? INT64_MAX : value < INT64_MIN ? INT64_MIN : value;
}

/** `-P`: a byte 0..255 (decimal, 0x hex or 0 octal); prints `<arg> is not a valid pattern byte`. */
export function parsePattern(session: IoSession, text: string): number | undefined {
  const value = strtolWhole(text);
  if (value === undefined || value < 0n || value > 255n) {
    session.print(`${text} is not a valid pattern byte`);
    return undefined;
  }
  return Number(value);
}

/**
 * `-b`/`-c` requests must be multiples of 512 bytes; prints which value is not. The offset is
 * the exact one: beyond 2^53 a number would round to a multiple of 512.
 */
export function checkSectorAligned(session: IoSession, offset: bigint, count: number): boolean {
  if (offset % 512n !== 0n) {
    session.print(`${offset} is not a sector-aligned value for 'offset'`);
    return false;
  }
  if (count % 512 !== 0) {
    session.print(`${count} is not a sector-aligned value for 'count'`);
    return false;
  }
  return true;
}

/**
 * `off len` of a single-buffer request (read, discard): both cvtnum values, the length at
 * most REQUEST_MAX_BYTES. Prints the problem and returns undefined otherwise.
 */
export function parseRange(
  session: IoSession, offsetText: string, lengthText: string,
): { offset: number; exactOffset: bigint; count: number } | undefined {
  const exactOffset = parseNumExact(session, offsetText);
  if (exactOffset === undefined) return undefined;
  const count = parseNum(session, lengthText);
  if (count === undefined) return undefined;
  if (count > REQUEST_MAX_BYTES) {
    session.print(`length cannot exceed ${REQUEST_MAX_BYTES}, given ${lengthText}`);
    return undefined;
  }
  return { offset: Number(exactOffset), exactOffset, count };
}

/**
 * The total length of a vectored request (readv, writev, aio_*): each length and their sum at
 * most REQUEST_MAX_BYTES. The elements are consecutive, so one buffer of the total is the same
 * request. Prints the problem and returns undefined when they are too long.
 */
export function parseVectorLength(session: IoSession, texts: readonly string[]): number | undefined {
  let total = 0;
  for (const text of texts) {
    const len = parseNum(session, text);
    if (len === undefined) return undefined;
    if (len > REQUEST_MAX_BYTES) {
      session.print(`Argument '${text}' exceeds maximum size ${REQUEST_MAX_BYTES}`);
      return undefined;
    }
    if (total > REQUEST_MAX_BYTES - len) {
      session.print(`The total number of bytes exceed the maximum size ${REQUEST_MAX_BYTES}`);
      return undefined;
    }
    total += len;
  }
  return total;
}

/**
 * `off len [len..]` of readv, writev, aio_read and aio_write: the usage when fewer than two
 * operands are given, else the offset and the total length. A number is the status the
 * command ends with (the problem was printed).
 */
export function parseVectorRequest(
  session: IoSession, command: IoCommand, operands: readonly string[],
): { offset: number; count: number } | number {
  if (operands.length < 2) return usage(session, command);
  const offset = parseNum(session, operands[0]);
  if (offset === undefined) return -1;
  const count = parseVectorLength(session, operands.slice(1));
  if (count === undefined) return -1;
  return { offset, count };
}

/** The options read and write commands share. */
export interface RequestOptions {
  /** `-b`: the VM state instead of the disk. */
  vmstate: boolean;
  csv: boolean;
  quiet: boolean;
  pattern?: number;
}

/**
 * The getopt loop of the read and write commands: -b, -C, -P and -q are taken here, and -i,
 * which ends the command successfully (QEMU only counts it as an invalid request); the
 * command's own letters go to `own`, which returns false when it refused a value (already
 * reported). The options and operands, or the status the command ends with.
 */
export function parseRequestOptions<T extends RequestOptions>(
  session: IoSession, command: IoCommand, argv: string[], short: GetoptSpec['short'],
  request: 'read' | 'write', options: T, own: (item: { key: string; value: string }) => boolean,
): { options: T; operands: string[] } | number {
  const { items, operands } = getopt(argv, { short });
  for (const item of items) {
    if (item.kind === 'error') return badOption(session, command, item.message);
    switch (item.key) {
      case 'b': options.vmstate = true; break;
      case 'C': options.csv = true; break;
      case 'i':
        session.print(`injecting invalid ${request} request`);
        return 0;
      case 'P':
        options.pattern = parsePattern(session, item.value);
        if (options.pattern === undefined) return -1;
        break;
      case 'q': options.quiet = true; break;
      default: if (!own(item)) return -1;
    }
  }
  return { options, operands };
}
