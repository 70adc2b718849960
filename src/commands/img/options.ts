/**
 * The option loop of a `blkio img` subcommand. The options many subcommands share (-h/--help,
 * -f, -U, -q, --image-opts, --object) are handled here; a subcommand names the ones it takes in
 * its getopt string and long options, and handles its own in a callback. Items are acted on in
 * command-line order, as qemu-img's getopt loop does: the first error or help ends the command.
 */
import type { ObjectRegistry } from '../../block/objects.js';
import { badOption, ExitStatus, newObjectRegistry, objectOption } from './common.js';
import { scanArgs, type LongOption, type OptionItem } from './getopt.js';
import { printHelp } from './help.js';

/** Long spellings of shared options, keyed like their short letters. */
export const FORMAT_OPTION: LongOption = { name: 'format', hasArg: true, key: 'f' };
export const FORCE_SHARE_OPTION: LongOption = { name: 'force-share', hasArg: false, key: 'U' };
export const IMAGE_OPTS_OPTION: LongOption = { name: 'image-opts', hasArg: false, key: 'image-opts' };
export const OUTPUT_OPTION: LongOption = { name: 'output', hasArg: true, key: 'output' };

export interface ImgArgsSpec {
  /** qemu-img's getopt string (starting with `:`). */
  short: string;
  /** Long options besides --help and --object. */
  long?: readonly LongOption[];
  /** Exit status when an --object fails (compare: 2); false for a subcommand without --object. */
  objectFailureStatus?: number | false;
  /** The subcommand's own options: true when it took the item. */
  own?: (item: OptionItem) => boolean;
}

/** What the shared options set. */
export interface SharedImgOptions {
  /** -f / --format */
  format?: string;
  imageOpts: boolean;
  /** -U / --force-share */
  forceShare: boolean;
  quiet: boolean;
  /** --output (for the subcommands that list OUTPUT_OPTION) */
  output?: string;
}

export interface ImgArgs extends SharedImgOptions {
  operands: string[];
  objects: ObjectRegistry;
}

/**
 * Run the option loop; -h prints the help and ends the command with status 0. An --object is
 * created as the loop reaches it, into the registry the subcommand hands to newLayer.
 */
export function parseImgArgs(command: string, argv: readonly string[], spec: ImgArgsSpec): ImgArgs {
  const objectFailureStatus = spec.objectFailureStatus ?? 1;
  const { options, operands } = scanArgs(command, argv, spec.short, [
    { name: 'help', hasArg: false, key: 'h' },
    ...(objectFailureStatus === false ? [] : [{ name: 'object', hasArg: true, key: 'object' }]),
    ...(spec.long ?? []),
  ]);
  const args: ImgArgs = { imageOpts: false, forceShare: false, quiet: false, operands, objects: newObjectRegistry() };
  for (const item of options) {
    if (item.key === 'object' && objectFailureStatus !== false) {
      objectOption(args.objects, item.value, objectFailureStatus);
      continue;
    }
    if (spec.own?.(item)) continue;
    switch (item.key) {
      case 'h': throw new ExitStatus(printHelp());
      case 'f': args.format = item.value; break;
      case 'U': args.forceShare = true; break;
      case 'q': args.quiet = true; break;
      case 'image-opts': args.imageOpts = true; break;
      case 'output': args.output = item.value; break;
      default: badOption(item);
    }
  }
  return args;
}
