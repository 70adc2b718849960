/**
 * Command-line scanning the way qemu-img's getopt_long() loop sees it (glibc rules): options
 * and operands may be mixed (operands are collected in order), `--` ends the options, short
 * options cluster (`-qf raw`, `-fraw`), long options take `=value` or the next argument and may
 * be abbreviated to a unique prefix. Problems are not thrown here: they come back as items in
 * the option sequence, because qemu-img reports them only when its loop reaches them.
 */

export interface LongOption {
  name: string;
  hasArg: boolean;
  /** The key the option is reported as (a short letter or a long name). */
  key: string;
}

export type OptionItem =
  | { key: string; value: string }
  /** `unrecognized option '<arg>'` or `missing argument for option '<arg>'`. */
  | { key: '?' | ':'; value: string };

export interface ScannedArgs {
  options: OptionItem[];
  operands: string[];
}

/**
 * Scan `argv` with a getopt short-option string (`"f:qu"`: a colon marks an argument) and long
 * options. Error items carry the argument qemu-img names in its message (glibc's argv[optind-1]).
 */
export function scanArgs(argv: readonly string[], shortSpec: string, longOptions: readonly LongOption[] = []): ScannedArgs {
  const options: OptionItem[] = [];
  const operands: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith('--')) {
      i = scanLong(argv, i, longOptions, options);
    } else if (arg.startsWith('-') && arg.length > 1) {
      i = scanShortCluster(argv, i, shortSpec, options);
    } else {
      operands.push(arg);
    }
  }
  return { options, operands };
}

function scanLong(argv: readonly string[], i: number, longOptions: readonly LongOption[], out: OptionItem[]): number {
  const arg = argv[i];
  const eq = arg.indexOf('=');
  const name = arg.slice(2, eq < 0 ? undefined : eq);
  const exact = longOptions.find((o) => o.name === name);
  const candidates = exact ? [exact] : longOptions.filter((o) => o.name.startsWith(name));
  // Abbreviations naming several options that behave the same are not ambiguous to glibc.
  const distinct = new Set(candidates.map((o) => `${o.key}/${o.hasArg}`));
  if (candidates.length === 0 || distinct.size > 1) {
    out.push({ key: '?', value: arg });
    return i;
  }
  const opt = candidates[0];
  if (!opt.hasArg) {
    out.push(eq < 0 ? { key: opt.key, value: '' } : { key: '?', value: arg });
    return i;
  }
  if (eq >= 0) {
    out.push({ key: opt.key, value: arg.slice(eq + 1) });
    return i;
  }
  if (i + 1 >= argv.length) {
    out.push({ key: ':', value: arg });
    return i;
  }
  out.push({ key: opt.key, value: argv[i + 1] });
  return i + 1;
}

function scanShortCluster(argv: readonly string[], i: number, shortSpec: string, out: OptionItem[]): number {
  const arg = argv[i];
  for (let c = 1; c < arg.length; c++) {
    const letter = arg[c];
    const at = letter === ':' ? -1 : shortSpec.indexOf(letter);
    const last = c === arg.length - 1;
    // glibc has moved on to the next element only when the failing letter ended this one.
    const named = last ? arg : argv[i - 1] ?? arg;
    if (at < 0) {
      out.push({ key: '?', value: named });
      continue;
    }
    if (shortSpec[at + 1] !== ':') {
      out.push({ key: letter, value: '' });
      continue;
    }
    if (!last) {
      out.push({ key: letter, value: arg.slice(c + 1) });
      return i;
    }
    if (i + 1 >= argv.length) {
      out.push({ key: ':', value: arg });
      return i;
    }
    out.push({ key: letter, value: argv[i + 1] });
    return i + 1;
  }
  return i;
}
