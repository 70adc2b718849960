/**
 * getopt() as qemu-io sees it, for its program options and for every command's options
 * (argv[0] is then the command name): the shared scanner, with each problem turned into the
 * line glibc prints on stderr (`<argv[0]>: invalid option -- 'x'`). Callers walk the items in
 * order, so a message appears only once their loop reaches it, as in C.
 */
import { scanOptions, type OptionProblem, type OptionSpec } from '../getopt.js';

export type { LongOption } from '../getopt.js';
export type GetoptSpec = OptionSpec;

export type GetoptItem =
  | { kind: 'option'; key: string; value: string }
  /** glibc printed `message` (one line, no newline) on stderr and getopt() returned '?'. */
  | { kind: 'error'; message: string };

export interface GetoptResult {
  items: GetoptItem[];
  operands: string[];
}

/** Scan `argv` (argv[0] is the program or command name, used in messages). */
export function getopt(argv: readonly string[], spec: GetoptSpec): GetoptResult {
  const name = argv[0];
  const { items, operands } = scanOptions(argv.slice(1), spec);
  return {
    items: items.map((item) => (item.kind === 'option' ? item : { kind: 'error', message: `${name}: ${glibcMessage(item)}` })),
    operands,
  };
}

function glibcMessage(p: OptionProblem): string {
  switch (p.problem) {
    case 'unrecognized': return `unrecognized option '${p.arg}'`;
    case 'ambiguous': return `option '${p.arg}' is ambiguous; possibilities:${p.candidates.map((o) => ` '${p.prefix}${o.name}'`).join('')}`;
    case 'unexpected-argument': return `option '${p.prefix}${p.option.name}' doesn't allow an argument`;
    case 'missing-argument': return `option '${p.prefix}${p.option.name}' requires an argument`;
    case 'invalid-letter': return `invalid option -- '${p.letter}'`;
    case 'missing-letter-argument': return `option requires an argument -- '${p.letter}'`;
  }
}
