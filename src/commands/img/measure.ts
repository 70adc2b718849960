/**
 * `blkio img measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--image-opts] [-f fmt] [-l snapshot_param] filename]`
 *
 * The file size an image of the output format needs: for a virtual size, or for the data of an
 * existing image (its whole backing chain). The format driver does the arithmetic.
 */
import { BlkioError } from '../../errors.js';
import type { MeasureResult } from '../../block/driver.js';
import { blockStatusAbove } from '../../block/io.js';
import { fileDriver } from '../../drivers/file.js';
import { getopt } from '../io/getopt.js';
import {
  appendOptionList, imgCvtnum, newObjectRegistry, objectOption, openImg, type OutputFormat, parseOutputFormat, reportError,
  ReportLines, runSubcommand, withLayer, writeErr, writeOut,
} from './common.js';
import { FORCE_SHARE_OPTION, IMAGE_OPTS_OPTION, OUTPUT_OPTION } from './options.js';
import { createRequestOptions, mergeCreateOptions, parseCreateOptions, setCreateOption } from './create.js';
import { printHelp } from './help.js';
import { loadSnapshotParam, parseSnapshotParam, type SnapshotParam } from './snapshot.js';
import { toQemuJson } from './qjson.js';

const LONG_OPTIONS = [
  { name: 'help', hasArg: false, key: 'h' },
  IMAGE_OPTS_OPTION,
  { name: 'object', hasArg: true, key: 'object' },
  OUTPUT_OPTION,
  { name: 'size', hasArg: true, key: 'size' },
  FORCE_SHARE_OPTION,
];

export function formatMeasure(info: MeasureResult, output: OutputFormat): string {
  if (output === 'json') {
    return toQemuJson({ required: info.required, 'fully-allocated': info.fullyAllocated, bitmaps: info.bitmaps }) + '\n';
  }
  return `required size: ${info.required}\nfully allocated size: ${info.fullyAllocated}\n` +
    (info.bitmaps === undefined ? '' : `bitmaps size: ${info.bitmaps}\n`);
}

export function imgMeasure(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    const { items, operands } = getopt(['measure', ...argv], { short: 'hf:O:o:l:U', long: LONG_OPTIONS });
    let output: OutputFormat = 'human';
    let format: string | undefined;
    let outFormat = 'raw';
    let optionText: string | undefined;
    let snapshot: SnapshotParam | undefined;
    let forceShare = false;
    let imageOpts = false;
    let size: number | undefined;
    const objects = newObjectRegistry();
    for (const item of items) {
      if (item.kind === 'error') {
        // measure answers a bad option with glibc's message and the full help (exit 0).
        writeErr(`${item.message}\n`);
        return printHelp();
      }
      switch (item.key) {
        case 'h': return printHelp();
        case 'f': format = item.value; break;
        case 'O': outFormat = item.value; break;
        case 'o': optionText = appendOptionList(optionText, item.value); break;
        case 'l': snapshot = parseSnapshotParam(item.value); break;
        case 'U': forceShare = true; break;
        case 'object': objectOption(objects, item.value); break;
        case 'image-opts': imageOpts = true; break;
        case 'output': output = parseOutputFormat(item.value); break;
        case 'size': size = imgCvtnum('image size', item.value); break;
      }
    }
    if (operands.length > 1) throw new BlkioError('EINVAL', 'At most one filename argument is allowed.');
    const filename = operands[0];
    if (filename === undefined && (imageOpts || format !== undefined || snapshot !== undefined)) {
      throw new BlkioError('EINVAL', '--image-opts, -f, and -l require a filename argument.');
    }
    if (filename !== undefined && size !== undefined) throw new BlkioError('EINVAL', '--size N cannot be used together with a filename.');
    if (filename === undefined && size === undefined) throw new BlkioError('EINVAL', 'Either --size N or one filename must be specified.');

    return withLayer(objects, async (layer) => {
      const source = filename === undefined ? undefined
        : await openImg(layer, { filename, format, imageOpts, readOnly: true, forceShare });
      if (source && snapshot) await loadSnapshotParam(source.root.node, snapshot);
      const driver = layer.driver(outFormat);
      if (!driver) throw new BlkioError('EINVAL', `Unknown file format '${outFormat}'`);
      if (!driver.createOptions) throw new BlkioError('ENOTSUP', `Format driver '${outFormat}' does not support image creation`);
      const specs = mergeCreateOptions(driver.createOptions, fileDriver.createOptions ?? []);
      let values;
      try {
        values = parseCreateOptions(optionText, specs);
      } catch (e) {
        reportError(e);
        throw new ReportLines([`Invalid options for file format '${outFormat}'`]);
      }
      if (size !== undefined) setCreateOption(values, specs, 'size', String(size));
      if (!driver.measure) throw new BlkioError('ENOTSUP', `Block driver '${outFormat}' does not support size measurement`);
      const top = source?.root.node;
      const info = await driver.measure(
        createRequestOptions(values),
        top && { node: top, chainStatus: (offset, bytes) => blockStatusAbove(top, undefined, offset, bytes) },
        (id) => layer.objects.get(id),
      );
      writeOut(formatMeasure(info, output));
      return 0;
    });
  });
}
