/**
 * Graphs from several definitions: `--blockdev` (keyval with implied `driver`, or JSON) adds
 * one node per definition, later ones referring to earlier ones by node name; `--drive`
 * (QemuOpts, as QEMU's -drive) adds a node with a named root user and its legacy options.
 */
import { BlkioError } from '../errors.js';
import type { BlockLayer } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { parseBlockdevArg } from '../options/keyval.js';
import { flattenTree } from '../options/json.js';
import { parseBool, parseQemuOpts, qemuOptsToDict } from '../options/qemuopts.js';
import type { FlatOptions } from '../options/types.js';
import { openImage, type OpenedImage } from './open-image.js';

/** Open every `--blockdev` definition in order; returns the node named `select`, else the last one. */
export async function openBlockdevs(layer: BlockLayer, defs: string[], select?: string): Promise<BlockNode> {
  let last: BlockNode | undefined;
  for (const def of defs) {
    const options = flattenTree(parseBlockdevArg(def));
    if (options.driver === undefined) throw new BlkioError('EINVAL', "Parameter 'driver' is missing");
    last = await layer.openNode(undefined, options, { protocol: false, inherited: {} });
  }
  if (select !== undefined) return layer.findNodeOrThrow(select);
  if (!last) throw new BlkioError('EINVAL', 'No --blockdev definition given');
  return last;
}

/** Keys of -drive that configure the drive (the root user) rather than the node. */
const DRIVE_KEYS = ['file', 'format', 'if', 'id', 'index', 'media', 'snapshot', 'copy-on-read', 'cache', 'aio', 'werror', 'rerror', 'serial', 'bus', 'unit'];

/** Open `-drive` strings; returns the last drive's root user (qemu-io acts on it). */
export async function openDrives(layer: BlockLayer, drives: string[], readOnlyUser = false): Promise<OpenedImage> {
  let last: OpenedImage | undefined;
  let index = 0;
  for (const text of drives) {
    const options: FlatOptions = qemuOptsToDict(parseQemuOpts(text, { warn: (l) => layer.warn(l) }));
    const drive: Record<string, string | undefined> = {};
    for (const key of DRIVE_KEYS) {
      const v = options[key];
      delete options[key];
      drive[key] = v === undefined || v === null ? undefined : String(v);
    }
    if (drive.format !== undefined && options.driver !== undefined) {
      throw new BlkioError('EINVAL', "Cannot specify both 'driver' and 'format'");
    }
    if (drive.if !== undefined && drive.if !== 'none') {
      throw new BlkioError('EINVAL', `Only if=none is supported here (no guest devices), got if=${drive.if}`);
    }
    const readOnly = readOnlyUser || parseBool('read-only', options['read-only'] ?? 'off');
    let copyOnRead = parseBool('copy-on-read', drive['copy-on-read'] ?? 'off');
    if (copyOnRead && readOnly) {
      layer.warn('warning: disabling copy-on-read on read-only drive');
      copyOnRead = false;
    }
    last = await openImage(layer, {
      filename: drive.file,
      format: drive.format,
      extraOptions: options,
      readOnly,
      snapshot: parseBool('snapshot', drive.snapshot ?? 'off'),
      copyOnRead,
      cache: drive.cache,
      defaultCache: 'writeback',
      backendName: drive.id ?? `none${index}`,
    });
    index++;
  }
  if (!last) throw new BlkioError('EINVAL', 'No --drive given');
  return last;
}
