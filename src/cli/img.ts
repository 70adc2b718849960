/**
 * `blkio img`: the qemu-img compatible tool. The program options (`-h`, `-V`) come before the
 * subcommand; each subcommand parses its own options the way qemu-img does.
 */
import { UsageError, reportError, runSubcommand, writeOut } from '../commands/img/common.js';
import { scanArgs } from '../commands/img/getopt.js';
import { printHelp } from '../commands/img/help.js';

type Subcommand = (argv: string[]) => Promise<number>;

const SUBCOMMANDS: Record<string, () => Promise<Subcommand>> = {
  amend: async () => (await import('../commands/img/amend.js')).imgAmend,
  bitmap: async () => (await import('../commands/img/bitmap.js')).imgBitmap,
  bench: async () => (await import('../commands/img/bench.js')).imgBench,
  check: async () => (await import('../commands/img/check.js')).imgCheck,
  commit: async () => (await import('../commands/img/commit.js')).imgCommit,
  compare: async () => (await import('../commands/img/compare.js')).imgCompare,
  convert: async () => (await import('../commands/img/convert.js')).imgConvert,
  create: async () => (await import('../commands/img/create.js')).imgCreate,
  dd: async () => (await import('../commands/img/dd.js')).imgDd,
  info: async () => (await import('../commands/img/info.js')).imgInfo,
  map: async () => (await import('../commands/img/map.js')).imgMap,
  measure: async () => (await import('../commands/img/measure.js')).imgMeasure,
  rebase: async () => (await import('../commands/img/rebase.js')).imgRebase,
  resize: async () => (await import('../commands/img/resize.js')).imgResize,
  snapshot: async () => (await import('../commands/img/snapshot.js')).imgSnapshot,
};

const VERSION = 'blkio img version 0.1.0 (qemu-img 7.2 compatible)\n';

export async function runImg(argv: string[]): Promise<number> {
  if (argv.length < 1) {
    reportError(new UsageError('Not enough arguments'));
    return 1;
  }
  // Program options end at the first operand (getopt's "+" mode): that is the subcommand.
  const first = argv.findIndex((a) => !a.startsWith('-') || a === '-' || a === '--');
  const programArgs = first < 0 ? argv : argv.slice(0, argv[first] === '--' ? first + 1 : first);
  const rest = first < 0 ? [] : argv.slice(first + (argv[first] === '--' ? 1 : 0));
  for (const item of scanArgs('blkio img', programArgs, ':hV', [
    { name: 'help', hasArg: false, key: 'h' },
    { name: 'version', hasArg: false, key: 'V' },
  ]).options) {
    switch (item.key) {
      case 'h': return printHelp();
      case 'V': writeOut(VERSION); return 0;
      case ':':
        reportError(new UsageError(`missing argument for option '${item.value}'`));
        return 1;
      default:
        reportError(new UsageError(`unrecognized option '${item.value}'`));
        return 1;
    }
  }
  if (rest.length === 0) return 0;
  const [name, ...args] = rest;
  const load = Object.hasOwn(SUBCOMMANDS, name) ? SUBCOMMANDS[name] : undefined;
  if (!load) return runSubcommand(() => Promise.reject(new UsageError(`Command not found: ${name}`)));
  return (await load())(args);
}
