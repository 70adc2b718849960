/**
 * `blkio img info [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename`
 *
 * Each image is opened without its backing chain; with --backing-chain the backing file named
 * in the header is opened next, by its full name and recorded format, until the chain ends.
 * Output is QEMU 7.2's ImageInfo, human or JSON.
 */
import { BlkioError } from '../../errors.js';
import type { BlockNode } from '../../block/node.js';
import type { ObjectRegistry } from '../../block/objects.js';
import { ROLE_COW } from '../../block/driver.js';
import { nodeInfoIfAny } from '../../block/io.js';
import { hasProtocolPrefix, resolveBackingFilename } from '../../block/graph.js';
import { sizeToStr } from '../../options/size.js';
import { oneImageName, openImg, parseOutputFormat, runSubcommand, withLayer, writeOut } from './common.js';
import { FORCE_SHARE_OPTION, FORMAT_OPTION, IMAGE_OPTS_OPTION, OUTPUT_OPTION, parseImgArgs } from './options.js';
import { formatSnapshotList, snapshotInfoList, type SnapshotInfoJson } from './snapshot.js';
import { dumpQObjectLines, toQemuJson } from './qjson.js';

/** QEMU's ImageInfo (7.2), members as QAPI names them. */
export interface ImageInfo {
  filename: string;
  format: string;
  'virtual-size': number;
  'actual-size'?: number;
  'cluster-size'?: number;
  'dirty-flag'?: boolean;
  encrypted?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: SnapshotInfoJson[];
  'format-specific'?: { type: string; data: Record<string, unknown> };
}

/**
 * Bytes a node occupies on its storage: the driver's answer; else unknown for protocols (their
 * data is not in their children: blkdebug, blkverify), else the sum over the data children.
 */
export async function allocatedSize(node: BlockNode): Promise<number | undefined> {
  if (node.driver.allocatedSize) return node.driver.allocatedSize(node);
  if (node.driver.kind === 'protocol') return undefined;
  let sum: number | undefined;
  for (const child of node.children) {
    if (child.role & ROLE_COW) continue;
    const size = await allocatedSize(child.node);
    if (size !== undefined) sum = (sum ?? 0) + size;
  }
  return sum;
}

/** What bdrv_query_image_info reports about one node. */
export async function queryImageInfo(node: BlockNode): Promise<ImageInfo> {
  const info: ImageInfo = { filename: node.filename, format: node.driver.name, 'virtual-size': node.getLength() };
  info['actual-size'] = await allocatedSize(node);
  // bdrv_get_info: filters without their own answer pass the question down.
  const di = nodeInfoIfAny(node);
  if (di) {
    if (di.clusterSize) info['cluster-size'] = di.clusterSize;
    info['dirty-flag'] = di.isDirty ?? false;
    // The node's own flag (bs->encrypted): a filter above an encrypted image is not encrypted.
    if (di.encrypted && node.driver.getInfo) info.encrypted = true;
  }
  const snapshots = snapshotInfoList(node);
  if (snapshots.length) info.snapshots = snapshots;
  const specific = await node.driver.formatSpecific?.(node);
  if (specific) info['format-specific'] = { type: specific.type, data: specific.json };
  if (node.backingFile) {
    info['backing-filename'] = node.backingFile;
    if (!node.filename.startsWith('json:') || isAbsoluteOrProtocol(node.backingFile)) {
      info['full-backing-filename'] = resolveBackingFilename(node.filename, node.backingFile);
    }
    if (node.backingFormat) info['backing-filename-format'] = node.backingFormat;
  }
  return info;
}

function isAbsoluteOrProtocol(name: string): boolean {
  return name.startsWith('/') || hasProtocolPrefix(name);
}

/** bdrv_image_info_dump. */
export function formatHumanInfo(info: ImageInfo): string {
  const size = info['virtual-size'];
  let out =
    `image: ${info.filename}\n` +
    `file format: ${info.format}\n` +
    `virtual size: ${sizeToStr(size)} (${BigInt(size)} bytes)\n` +
    `disk size: ${info['actual-size'] === undefined ? 'unavailable' : sizeToStr(info['actual-size'])}\n`;
  if (info.encrypted) out += 'encrypted: yes\n';
  if (info['cluster-size'] !== undefined) out += `cluster_size: ${info['cluster-size']}\n`;
  if (info['dirty-flag']) out += 'cleanly shut down: no\n';
  const backing = info['backing-filename'];
  if (backing !== undefined) {
    const full = info['full-backing-filename'];
    out += `backing file: ${backing}`;
    if (full === undefined) out += ' (cannot determine actual path)';
    else if (full !== backing) out += ` (actual path: ${full})`;
    out += '\n';
    if (info['backing-filename-format'] !== undefined) out += `backing file format: ${info['backing-filename-format']}\n`;
  }
  if (info.snapshots) out += formatSnapshotList(info.snapshots);
  const specific = info['format-specific'];
  if (specific) out += 'Format specific information:\n' + dumpQObjectLines(specific.data, 1).map((l) => `${l}\n`).join('');
  return out;
}

export function imgInfo(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    let chain = false;
    const { format, imageOpts, forceShare, output, operands, objects } = parseImgArgs('info', argv, {
      short: ':f:hU',
      long: [FORMAT_OPTION, OUTPUT_OPTION, { name: 'backing-chain', hasArg: false, key: 'backing-chain' }, IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION],
      own: (item) => {
        switch (item.key) {
          case 'backing-chain': chain = true; return true;
          default: return false;
        }
      },
    });
    const filename = oneImageName(operands);
    const outputFormat = parseOutputFormat(output);
    const list = await collectImageInfo(filename, format, imageOpts, chain, forceShare, objects);
    if (outputFormat === 'human') writeOut(list.map(formatHumanInfo).join('\n'));
    else writeOut(toQemuJson(chain ? list : list[0]) + '\n');
    return 0;
  });
}

async function collectImageInfo(
  first: string, firstFormat: string | undefined, imageOpts: boolean, chain: boolean, forceShare: boolean, objects: ObjectRegistry,
): Promise<ImageInfo[]> {
  const list: ImageInfo[] = [];
  const seen = new Set<string>();
  let filename: string | undefined = first;
  let format = firstFormat;
  let opts = imageOpts;
  while (filename !== undefined) {
    if (seen.has(filename)) throw new BlkioError('ELOOP', `Backing file '${filename}' creates an infinite loop.`);
    seen.add(filename);
    const info = await withLayer(objects, async (layer) => {
      const blk = await openImg(layer, {
        filename: filename!, format, imageOpts: opts, readOnly: true, forceShare, noBacking: true, withoutIo: true,
      });
      return queryImageInfo(blk.node);
    });
    list.push(info);
    filename = undefined;
    format = undefined;
    if (chain) {
      if (info['full-backing-filename'] !== undefined) filename = info['full-backing-filename'];
      else if (info['backing-filename'] !== undefined) {
        throw new BlkioError('EINVAL', `Could not determine absolute backing filename, but backing filename '${info['backing-filename']}' present`);
      }
      format = info['backing-filename-format'];
    }
    opts = false;
  }
  return list;
}
