/**
 * glibc getopt()/getopt_long() scanning, shared by qemu-io (and its commands) and qemu-img:
 * options and operands may be mixed (operands keep their order), `--` ends the options, short
 * options cluster (`-vP 0x55`, `-fraw`), long options take `=value` or the next argument and
 * may be abbreviated to a unique prefix. Problems do not throw: they come back as items in the
 * option sequence, because both tools report them only when their loop reaches them. How a
 * problem reads is each tool's business (io/getopt.ts: glibc's own messages; img/getopt.ts:
 * qemu-img's).
 */

export interface LongOption {
  name: string;
  hasArg: boolean;
  /** What the option is reported as: its short letter, or the long name itself. */
  key: string;
}

export interface OptionSpec {
  /** A getopt short-option string: `"bCl:pP:qs:v"` (a colon marks an argument). */
  short: string;
  /** Without long options (plain getopt), `--foo` is a cluster of short options `-`, `f`, ... */
  long?: readonly LongOption[];
  /** Long options that are also accepted with a single dash (`-drive`, like QEMU's own spelling). */
  singleDashLong?: readonly string[];
  /** The first operand ends the options (POSIX getopt, glibc's `+`): it and the rest are operands. */
  stopAtOperand?: boolean;
}

/** What went wrong with the argument `args[index]`. */
export type OptionProblem = { index: number; arg: string } & (
  /** A long option that no entry (`unrecognized`) or several different ones (`ambiguous`) match. */
  | { problem: 'unrecognized' }
  | { problem: 'ambiguous'; prefix: string; candidates: readonly LongOption[] }
  /** A long option given `=value` though it takes none, or lacking the argument it needs. */
  | { problem: 'unexpected-argument' | 'missing-argument'; prefix: string; option: LongOption }
  /** A short letter not in the spec; `endsElement`: it was the last letter of its cluster. */
  | { problem: 'invalid-letter'; letter: string; endsElement: boolean }
  | { problem: 'missing-letter-argument'; letter: string }
);

export type ScannedItem =
  | { kind: 'option'; key: string; value: string }
  | ({ kind: 'error' } & OptionProblem);

export interface ScannedOptions {
  items: ScannedItem[];
  operands: string[];
}

/** Scan `args` (the words after the program or command name). */
export function scanOptions(args: readonly string[], spec: OptionSpec): ScannedOptions {
  const items: ScannedItem[] = [];
  const operands: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === '--') {
      operands.push(...args.slice(i + 1));
      break;
    }
    if ((arg.startsWith('--') && spec.long) || spec.singleDashLong?.includes(arg.slice(1))) {
      const prefix = arg.startsWith('--') ? '--' : '-';
      i = scanLong(args, i, prefix, spec.long ?? [], items);
    } else if (arg.startsWith('-') && arg.length > 1) {
      i = scanShortCluster(args, i, spec.short, items);
    } else if (spec.stopAtOperand) {
      operands.push(...args.slice(i));
      break;
    } else {
      operands.push(arg);
    }
  }
  return { items, operands };
}

function scanLong(
  args: readonly string[], i: number, prefix: string, longOptions: readonly LongOption[], out: ScannedItem[],
): number {
  const arg = args[i];
  const text = arg.slice(prefix.length);
  const eq = text.indexOf('=');
  const optName = eq < 0 ? text : text.slice(0, eq);
  const exact = longOptions.find((o) => o.name === optName);
  const candidates = exact ? [exact] : longOptions.filter((o) => o.name.startsWith(optName));
  if (candidates.length === 0) {
    out.push({ kind: 'error', index: i, arg, problem: 'unrecognized' });
    return i;
  }
  // Abbreviations naming several options that behave the same are not ambiguous to glibc.
  if (new Set(candidates.map((o) => `${o.key}/${o.hasArg}`)).size > 1) {
    out.push({ kind: 'error', index: i, arg, problem: 'ambiguous', prefix, candidates });
    return i;
  }
  const option = candidates[0];
  if (!option.hasArg) {
    out.push(eq < 0
      ? { kind: 'option', key: option.key, value: '' }
      : { kind: 'error', index: i, arg, problem: 'unexpected-argument', prefix, option });
    return i;
  }
  if (eq >= 0) {
    out.push({ kind: 'option', key: option.key, value: text.slice(eq + 1) });
    return i;
  }
  if (i + 1 >= args.length) {
    out.push({ kind: 'error', index: i, arg, problem: 'missing-argument', prefix, option });
    return i;
  }
  out.push({ kind: 'option', key: option.key, value: args[i + 1] });
  return i + 1;
}

function scanShortCluster(args: readonly string[], i: number, short: string, out: ScannedItem[]): number {
  const arg = args[i];
  for (let c = 1; c < arg.length; c++) {
    const letter = arg[c];
    const at = letter === ':' ? -1 : short.indexOf(letter);
    const last = c === arg.length - 1;
    if (at < 0) {
      out.push({ kind: 'error', index: i, arg, problem: 'invalid-letter', letter, endsElement: last });
      continue;
    }
    if (short[at + 1] !== ':') {
      out.push({ kind: 'option', key: letter, value: '' });
      continue;
    }
    if (!last) {
      out.push({ kind: 'option', key: letter, value: arg.slice(c + 1) });
      return i;
    }
    if (i + 1 >= args.length) {
      out.push({ kind: 'error', index: i, arg, problem: 'missing-letter-argument', letter });
      return i;
    }
    out.push({ kind: 'option', key: letter, value: args[i + 1] });
    return i + 1;
  }
  return i;
}
