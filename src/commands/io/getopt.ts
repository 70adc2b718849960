/**
 * glibc getopt()/getopt_long() as qemu-io sees it, for its program options and for every
 * command's options (argv[0] is then the command name): options and operands may be mixed
 * (operands keep their order), `--` ends the options, short options cluster (`-vP 0x55`,
 * `-P0x55`), long options take `=value` or the next argument and may be abbreviated to a
 * unique prefix. A problem becomes an `error` item carrying glibc's exact message; callers
 * walk the items in order, so a message appears only once their loop reaches it, as in C.
 */

export interface LongOption {
  name: string;
  hasArg: boolean;
  /** What the option is reported as: its short letter, or the long name itself. */
  key: string;
}

export type GetoptItem =
  | { kind: 'option'; key: string; value: string }
  /** glibc printed `message` (one line, no newline) on stderr and getopt() returned '?'. */
  | { kind: 'error'; message: string };

export interface GetoptResult {
  items: GetoptItem[];
  operands: string[];
}

export interface GetoptSpec {
  /** A getopt short-option string: `"bCl:pP:qs:v"` (a colon marks an argument). */
  short: string;
  long?: readonly LongOption[];
  /** Long options that are also accepted with a single dash (`-drive`, like QEMU's own spelling). */
  singleDashLong?: readonly string[];
  /** The first operand ends the options (POSIX getopt, glibc's `+`): it and the rest are operands. */
  stopAtOperand?: boolean;
}

/** Scan `argv` (argv[0] is the program or command name, used in messages). */
export function getopt(argv: readonly string[], spec: GetoptSpec): GetoptResult {
  const name = argv[0];
  const items: GetoptItem[] = [];
  const operands: string[] = [];
  const longOptions = spec.long ?? [];
  for (let i = 1; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      operands.push(...argv.slice(i + 1));
      break;
    }
    // Without long options (plain getopt), `--foo` is a cluster of short options `-`, `f`, ...
    if ((arg.startsWith('--') && spec.long) || spec.singleDashLong?.includes(arg.slice(1))) {
      const prefix = arg.startsWith('--') ? '--' : '-';
      i = scanLong(name, argv, i, prefix, longOptions, items);
    } else if (arg.startsWith('-') && arg.length > 1) {
      i = scanShortCluster(name, argv, i, spec.short, items);
    } else if (spec.stopAtOperand) {
      operands.push(...argv.slice(i));
      break;
    } else {
      operands.push(arg);
    }
  }
  return { items, operands };
}

function scanLong(
  name: string, argv: readonly string[], i: number, prefix: string, longOptions: readonly LongOption[], out: GetoptItem[],
): number {
  const text = argv[i].slice(prefix.length);
  const eq = text.indexOf('=');
  const optName = eq < 0 ? text : text.slice(0, eq);
  const exact = longOptions.find((o) => o.name === optName);
  const candidates = exact ? [exact] : longOptions.filter((o) => o.name.startsWith(optName));
  if (candidates.length === 0) {
    out.push({ kind: 'error', message: `${name}: unrecognized option '${prefix}${text}'` });
    return i;
  }
  // Abbreviations naming several options that behave the same are not ambiguous to glibc.
  if (new Set(candidates.map((o) => `${o.key}/${o.hasArg}`)).size > 1) {
    const possibilities = candidates.map((o) => ` '${prefix}${o.name}'`).join('');
    out.push({ kind: 'error', message: `${name}: option '${prefix}${text}' is ambiguous; possibilities:${possibilities}` });
    return i;
  }
  const opt = candidates[0];
  if (!opt.hasArg) {
    out.push(eq < 0
      ? { kind: 'option', key: opt.key, value: '' }
      : { kind: 'error', message: `${name}: option '${prefix}${opt.name}' doesn't allow an argument` });
    return i;
  }
  if (eq >= 0) {
    out.push({ kind: 'option', key: opt.key, value: text.slice(eq + 1) });
    return i;
  }
  if (i + 1 >= argv.length) {
    out.push({ kind: 'error', message: `${name}: option '${prefix}${opt.name}' requires an argument` });
    return i;
  }
  out.push({ kind: 'option', key: opt.key, value: argv[i + 1] });
  return i + 1;
}

function scanShortCluster(name: string, argv: readonly string[], i: number, short: string, out: GetoptItem[]): number {
  const arg = argv[i];
  for (let c = 1; c < arg.length; c++) {
    const letter = arg[c];
    const at = letter === ':' ? -1 : short.indexOf(letter);
    if (at < 0) {
      out.push({ kind: 'error', message: `${name}: invalid option -- '${letter}'` });
      continue;
    }
    if (short[at + 1] !== ':') {
      out.push({ kind: 'option', key: letter, value: '' });
      continue;
    }
    if (c < arg.length - 1) {
      out.push({ kind: 'option', key: letter, value: arg.slice(c + 1) });
      return i;
    }
    if (i + 1 >= argv.length) {
      out.push({ kind: 'error', message: `${name}: option requires an argument -- '${letter}'` });
      return i;
    }
    out.push({ kind: 'option', key: letter, value: argv[i + 1] });
    return i + 1;
  }
  return i;
}
