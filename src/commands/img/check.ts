/**
 * `blkio img check [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r leaks|all] [-T src_cache] [-U] filename`
 *
 * Runs the format driver's consistency check (repairing with -r, then checking again) and
 * reports like qemu-img. Exit status: 0 clean, 1 check failed, 2 corruptions, 3 only leaks,
 * 63 the format has no check.
 */
import { BlkioError } from '../../errors.js';
import type { CheckResult } from '../../block/driver.js';
import type { BlockNode } from '../../block/node.js';
import { formatFixed } from '../../options/size.js';
import {
  checkSourceCacheMode, ExitStatus, oneImageName, openImg, type OutputFormat, parseOutputFormat, reportError, runSubcommand,
  skipFilters, UsageError, withLayer, writeErr, writeOut,
} from './common.js';
import { FORCE_SHARE_OPTION, FORMAT_OPTION, IMAGE_OPTS_OPTION, OUTPUT_OPTION, parseImgArgs } from './options.js';
import { toQemuJson } from './qjson.js';

/** QEMU's ImageCheck: counters that are zero are left out, except check-errors. */
export interface ImageCheck {
  filename: string;
  format: string;
  'check-errors': number;
  corruptions?: number;
  leaks?: number;
  'corruptions-fixed'?: number;
  'leaks-fixed'?: number;
  'image-end-offset'?: number;
  'total-clusters'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
}

function nonZero(n: number | undefined): number | undefined {
  return n ? n : undefined;
}

export function toImageCheck(filename: string, format: string, r: CheckResult): ImageCheck {
  return {
    filename, format, 'check-errors': r.checkErrors,
    corruptions: nonZero(r.corruptions), leaks: nonZero(r.leaks),
    'corruptions-fixed': nonZero(r.corruptionsFixed), 'leaks-fixed': nonZero(r.leaksFixed),
    'image-end-offset': nonZero(r.imageEndOffset),
    'total-clusters': nonZero(r.totalClusters), 'allocated-clusters': nonZero(r.allocatedClusters),
    'fragmented-clusters': nonZero(r.fragmentedClusters), 'compressed-clusters': nonZero(r.compressedClusters),
  };
}

export function formatHumanCheck(c: ImageCheck): string {
  let out = '';
  if (!c.corruptions && !c.leaks && !c['check-errors']) {
    out += 'No errors were found on the image.\n';
  } else {
    if (c.corruptions) out += `\n${c.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    if (c.leaks) out += `\n${c.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    if (c['check-errors']) out += `\n${c['check-errors']} internal errors have occurred during the check.\n`;
  }
  const total = c['total-clusters'] ?? 0;
  const allocated = c['allocated-clusters'] ?? 0;
  if (total && allocated) {
    const pct = (n: number, of: number): string => formatFixed((n * 100) / of, 2);
    out += `${allocated}/${total} = ${pct(allocated, total)}% allocated, ${pct(c['fragmented-clusters'] ?? 0, allocated)}% fragmented, ` +
      `${pct(c['compressed-clusters'] ?? 0, allocated)}% compressed clusters\n`;
  }
  if (c['image-end-offset']) out += `Image end offset: ${c['image-end-offset']}\n`;
  return out;
}

/** bdrv_check: only the top node's own driver checks; filters do not pass it down. */
async function runCheck(node: BlockNode, repair: 'leaks' | 'all' | undefined): Promise<CheckResult> {
  if (!node.driver.check) throw new ExitStatus(63);
  // QEMU reports any ENOTSUP of a check (vdi's repairs) as a format without checks.
  return node.driver.check(node, repair, (line) => writeErr(`${line}\n`)).catch((e: unknown) => {
    throw e instanceof BlkioError && e.code === 'ENOTSUP' ? new ExitStatus(63) : e;
  });
}

export function imgCheck(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    let repair: 'leaks' | 'all' | undefined;
    let cache = 'writeback';
    const { format, imageOpts, forceShare, quiet, output, operands, objects } = parseImgArgs('check', argv, {
      short: ':hf:r:T:qU',
      long: [FORMAT_OPTION, { name: 'repair', hasArg: true, key: 'r' }, OUTPUT_OPTION, IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION],
      own: (item) => {
        switch (item.key) {
          case 'r':
            if (item.value !== 'leaks' && item.value !== 'all') {
              throw new UsageError(`Unknown option value for -r (expecting 'leaks' or 'all'): ${item.value}`);
            }
            repair = item.value;
            return true;
          case 'T': cache = item.value; return true;
          default: return false;
        }
      },
    });
    const filename = oneImageName(operands);
    const outputFormat = parseOutputFormat(output);
    checkSourceCacheMode(cache);
    return withLayer(objects, async (layer) => {
      layer.openForCheck = true;
      try {
        const blk = await openImg(layer, { filename, format, imageOpts, readOnly: repair === undefined, forceShare, cache });
        return await checkImage(blk.node, filename, repair, outputFormat, quiet);
      } catch (e) {
        if (e instanceof ExitStatus && e.status === 63) {
          reportError(new BlkioError('ENOTSUP', 'This image format does not support checks'));
        }
        throw e;
      }
    });
  });
}

async function checkImage(
  node: BlockNode, filename: string, repair: 'leaks' | 'all' | undefined, output: OutputFormat, quiet: boolean,
): Promise<number> {
  const formatName = skipFilters(node).driver.name;
  let failure: BlkioError | undefined;
  let check: ImageCheck | undefined;
  try {
    let result = await runCheck(node, repair);
    if (result.corruptionsFixed || result.leaksFixed) {
      if (output === 'human' && !quiet) {
        writeOut(`The following inconsistencies were found and repaired:\n\n    ${result.leaksFixed} leaked clusters\n` +
          `    ${result.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`);
      }
      const fixed = { leaksFixed: result.leaksFixed, corruptionsFixed: result.corruptionsFixed };
      result = { ...(await runCheck(node, undefined)), ...fixed };
    }
    check = toImageCheck(filename, formatName, result);
  } catch (e) {
    if (!(e instanceof BlkioError)) throw e;
    failure = e;
  }
  if (check && !quiet) writeOut(output === 'human' ? formatHumanCheck(check) : toQemuJson(check) + '\n');
  if (failure || check!['check-errors']) {
    // Reported before the image closes, as QEMU does: closing can add messages of its own.
    reportError(new BlkioError('EIO', failure ? `Check failed: ${failure.strerror}` : 'Check failed'));
    throw new ExitStatus(1);
  }
  if (check!.corruptions) return 2;
  return check!.leaks ? 3 : 0;
}
