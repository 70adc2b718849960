/**
 * Command-line scanning the way qemu-img's getopt_long() loop sees it: the shared scanner, with
 * glibc's messages off (qemu-img's short-option strings start with `:`). A problem comes back as
 * getopt's return value, `?` (unrecognized) or `:` (missing argument), carrying the argument
 * qemu-img names in its own message.
 */
import { scanOptions, type LongOption, type OptionProblem } from '../getopt.js';

export type { LongOption } from '../getopt.js';

export type OptionItem =
  | { key: string; value: string }
  /** `unrecognized option '<arg>'` or `missing argument for option '<arg>'`. */
  | { key: '?' | ':'; value: string };

export interface ScannedArgs {
  options: OptionItem[];
  operands: string[];
}

/** Scan `argv` with a getopt short-option string (`"f:qu"`: a colon marks an argument) and long options. */
/** `command` is the subcommand name, which glibc's argv[optind - 1] can point at (argv[0] here is what followed it). */
export function scanArgs(command: string, argv: readonly string[], shortSpec: string, longOptions: readonly LongOption[] = []): ScannedArgs {
  const { items, operands } = scanOptions(argv, { short: shortSpec, long: longOptions });
  const options = items.map((item): OptionItem => (item.kind === 'option'
    ? { key: item.key, value: item.value }
    : { key: item.problem === 'missing-argument' || item.problem === 'missing-letter-argument' ? ':' : '?', value: namedArgument(command, argv, item) }));
  return { options, operands };
}

/** The word qemu-img names: glibc's argv[optind - 1]. */
function namedArgument(command: string, argv: readonly string[], p: OptionProblem): string {
  // glibc has moved on to the next element only when the failing letter ended this one.
  if (p.problem === 'invalid-letter' && !p.endsElement) return p.index === 0 ? command : argv[p.index - 1] ?? p.arg;
  return p.arg;
}
