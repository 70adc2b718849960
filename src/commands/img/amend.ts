/**
 * `blkio img amend [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename`
 *
 * Change format options of an existing image in place; the format driver does the work.
 * Options only `create` knows are refused with a hint saying so.
 */
import { BlkioError } from '../../errors.js';
import type { BlockDriver } from '../../block/driver.js';
import type { BlockLayer } from '../../block/graph.js';
import { Progress, amendPercent, parseProgressMode } from '../../cli/progress.js';
import { hasHelpOption } from '../../options/qemuopts.js';
import type { ObjectRegistry } from '../../block/objects.js';
import {
  appendOptionList, checkCacheMode, ExitStatus, openImg, reportError, runSubcommand, UsageError, withLayer, writeOut,
} from './common.js';
import { createRequestOptions, formatOptionHelp, mergeCreateOptions, parseCreateOptions } from './create.js';
import { IMAGE_OPTS_OPTION, parseImgArgs } from './options.js';

function amendingDriver(driver: BlockDriver<any> | undefined, format: string): BlockDriver<any> {
  if (!driver) throw new BlkioError('EINVAL', `Unknown file format '${format}'`);
  if (!driver.amend || !driver.amendOptions) {
    throw new BlkioError('ENOTSUP', `Format driver '${format}' does not support option amendment`);
  }
  return driver;
}

function printAmendHelp(layer: BlockLayer, format: string): number {
  const driver = amendingDriver(layer.driver(format), format);
  writeOut(`Amend options for '${format}':\n${formatOptionHelp(driver.amendOptions!)}`);
  return 0;
}

/** Parse against the amend options; a name only creation knows gets a hint saying so. */
function parseAmendOptions(driver: BlockDriver<any>, text: string) {
  try {
    return parseCreateOptions(text, driver.amendOptions!);
  } catch (e) {
    if (!(e instanceof BlkioError)) throw e;
    try {
      parseCreateOptions(text, mergeCreateOptions(driver.amendOptions!, driver.createOptions ?? []));
    } catch {
      throw e;
    }
    throw new BlkioError(e.code, e.message, [...e.hints, 'This option is only supported for image creation']);
  }
}

export function imgAmend(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    let optionText: string | undefined;
    let cache = 'writeback';
    let showProgress = false;
    let force = false;
    const { format, imageOpts, quiet, operands, objects } = parseImgArgs('amend', argv, {
      short: ':ho:f:t:pq',
      long: [IMAGE_OPTS_OPTION, { name: 'force', hasArg: false, key: 'force' }],
      own: (item) => {
        switch (item.key) {
          case 'o': optionText = appendOptionList(optionText, item.value); return true;
          case 't': cache = item.value; return true;
          case 'p': showProgress = true; return true;
          case 'force': force = true; return true;
          default: return false;
        }
      },
    });
    if (optionText === undefined) throw new UsageError('Must specify options (-o)');
    // From here on qemu-img ends its progress line (after any error) when -p is on.
    const progress = new Progress(parseProgressMode(undefined, showProgress, quiet), { percentOf: amendPercent });
    try {
      const status = await amend(optionText, operands, { format, cache, imageOpts, force, objects }, progress);
      progress.end();
      return status;
    } catch (e) {
      if (progress.mode !== 'human') throw e;
      reportError(e);
      progress.end();
      throw new ExitStatus(1);
    } finally {
      progress.dispose();
    }
  });
}

interface AmendRequest {
  format?: string;
  cache: string;
  imageOpts: boolean;
  force: boolean;
  objects: ObjectRegistry;
}

async function amend(optionText: string, operands: string[], req: AmendRequest, progress: Progress): Promise<number> {
  const { format, cache, imageOpts, force } = req;
  return withLayer(req.objects, async (layer) => {
    if (format !== undefined && hasHelpOption(optionText)) return printAmendHelp(layer, format);
    if (operands.length !== 1) throw new BlkioError('EINVAL', 'Expecting one image file name');
    const filename = operands[0];
    checkCacheMode(cache);
    const blk = await openImg(layer, { filename, format, imageOpts, cache });
    // The root node itself, as qemu-img: a filter above the image has no options to amend.
    const node = blk.root.node;
    const driverName = node.driver.name;
    if (hasHelpOption(optionText)) return printAmendHelp(layer, driverName);
    const driver = amendingDriver(node.driver, driverName);
    const values = parseAmendOptions(driver, optionText);
    progress.update(0, 1);
    try {
      await driver.amend!(node, createRequestOptions(values), force, (done, total) => progress.update(done, total));
    } finally {
      progress.update(1, 1);
    }
    await blk.flush();
    return 0;
  });
}
