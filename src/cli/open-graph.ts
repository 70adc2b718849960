/**
 * Graphs from several definitions: `--blockdev` (keyval with implied `driver`, or JSON) adds
 * one node per definition, later ones referring to earlier ones by node name, as QEMU's
 * -blockdev; `--drive` (QemuOpts, as QEMU's -drive with if=none) opens a node with a named root
 * user (a drive) and the drive's own options (copy-on-read, snapshot, cache, ...).
 */
import { BlkioError } from '../errors.js';
import { BlockBackend } from '../block/backend.js';
import type { BlockLayer } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../block/permissions.js';
import { BLOCKDEV_OPTIONS } from '../drivers/blockdev-schema.js';
import { isJsonBlockdevArg, parseBlockdevArg } from '../options/keyval.js';
import { visitQapiObject } from '../options/qapi-input.js';
import { flattenTree } from '../options/json.js';
import { parseBool, parseNumber, parseQemuOpts, qemuOptsToDict } from '../options/qemuopts.js';
import type { FlatOptions } from '../options/types.js';
import { isCacheMode, openImage, type OpenedImage } from './open-image.js';

/** Open every `--blockdev` definition in order; returns the last node. */
export async function openBlockdevs(layer: BlockLayer, defs: readonly string[]): Promise<BlockNode> {
  let last: BlockNode | undefined;
  for (const def of defs) {
    // QEMU checks the definition against its QAPI schema before the block layer sees it.
    const options = flattenTree(visitQapiObject(BLOCKDEV_OPTIONS, parseBlockdevArg(def), isJsonBlockdevArg(def) ? 'json' : 'keyval'));
    // QEMU's blockdev-add: only nested nodes may go without a name.
    if (typeof options['node-name'] !== 'string') throw new BlkioError('EINVAL', "'node-name' must be specified for the root node");
    last = await layer.openNode(undefined, options, { protocol: false, inherited: {} });
  }
  if (!last) throw new BlkioError('EINVAL', 'No --blockdev definition given');
  return last;
}

/** An opened `--drive`: its root user carries the drive's id. */
export interface Drive extends OpenedImage {
  id: string;
}

/** The interfaces QEMU knows for -drive; without guest devices only `none` makes sense here. */
const INTERFACES = ['none', 'ide', 'scsi', 'floppy', 'pflash', 'mtd', 'sd', 'virtio', 'xen'];
const AIO_MODES = ['threads', 'native', 'io_uring'];

/**
 * Keys of -drive that configure the drive rather than its node (QEMU's legacy and common drive
 * options). Everything else (driver, node-name, discard, file.*, ...) goes to the node.
 */
const DRIVE_KEYS = [
  'file', 'format', 'if', 'id', 'bus', 'unit', 'index', 'media', 'read-only', 'copy-on-read', 'snapshot',
  'cache', 'aio', 'werror', 'rerror',
] as const;
type DriveKey = (typeof DRIVE_KEYS)[number];

/** Take the drive's own keys out of the option dictionary; what stays is for the node. */
function takeDriveKeys(options: FlatOptions): Partial<Record<DriveKey, string>> {
  const drive: Partial<Record<DriveKey, string>> = {};
  for (const key of DRIVE_KEYS) {
    const value = options[key];
    delete options[key];
    if (typeof value === 'string') drive[key] = value;
  }
  return drive;
}

/** An error action (what a guest device does on I/O errors): checked as QEMU does, no device to act. */
function checkErrorAction(value: string | undefined, read: boolean): void {
  if (value === undefined) return;
  const actions = read ? ['ignore', 'stop', 'report'] : ['ignore', 'enospc', 'stop', 'report'];
  if (!actions.includes(value)) throw new BlkioError('EINVAL', `'${value}' invalid ${read ? 'read' : 'write'} error action`);
}

function optionalNumber(name: string, value: string | undefined): number | undefined {
  return value === undefined ? undefined : parseNumber(name, value);
}

/**
 * Open `-drive` strings in order (QEMU's drive_new for if=none, which has no device limit):
 * each gets a root user named by `id`, else `none<unit>` with the first free unit. `-r` makes
 * every drive read-only.
 */
export async function openDrives(layer: BlockLayer, texts: readonly string[], readOnlyUser = false): Promise<Drive[]> {
  const drives: Drive[] = [];
  const units = new Set<number>();
  for (const text of texts) {
    const options: FlatOptions = qemuOptsToDict(parseQemuOpts(text, { id: 'keep', warn: (l) => layer.warn(l) }));
    const drive = takeDriveKeys(options);
    if (drive.cache !== undefined && !isCacheMode(drive.cache)) throw new BlkioError('EINVAL', 'invalid cache option');
    let readOnly = readOnlyUser || parseBool('read-only', drive['read-only'] ?? 'off');
    let copyOnRead = parseBool('copy-on-read', drive['copy-on-read'] ?? 'off');
    const bus = optionalNumber('bus', drive.bus) ?? 0;
    let unit = optionalNumber('unit', drive.unit);
    const index = optionalNumber('index', drive.index);
    if (drive.media !== undefined && drive.media !== 'disk' && drive.media !== 'cdrom') {
      throw new BlkioError('EINVAL', `'${drive.media}' invalid media`);
    }
    if (drive.media === 'cdrom') readOnly = true;
    if (readOnly && copyOnRead) {
      layer.warn('warning: disabling copy-on-read on read-only drive');
      copyOnRead = false;
    }
    const iface = drive.if ?? 'none';
    if (!INTERFACES.includes(iface)) throw new BlkioError('EINVAL', `unsupported bus type '${iface}'`);
    if (iface !== 'none') throw new BlkioError('EINVAL', `if=${iface} needs a guest device: only if=none is supported`);
    if (index !== undefined) {
      if (drive.bus !== undefined || unit !== undefined) throw new BlkioError('EINVAL', 'index cannot be used with bus and unit');
      unit = index;
    }
    if (unit === undefined) for (unit = 0; units.has(unit); unit++);
    if (units.has(unit)) throw new BlkioError('EEXIST', `drive with bus=${bus}, unit=${unit} (index=${unit}) exists`);
    const id = drive.id ?? `none${unit}`;
    if (drives.some((d) => d.id === id)) throw new BlkioError('EEXIST', `Duplicate ID '${id}' for drive`);
    const snapshot = parseBool('snapshot', drive.snapshot ?? 'off');
    if (drive.aio !== undefined && !AIO_MODES.includes(drive.aio)) throw new BlkioError('EINVAL', 'invalid aio option');
    checkErrorAction(drive.werror, false);
    checkErrorAction(drive.rerror, true);
    if (drive.format !== undefined && options.driver !== undefined) {
      throw new BlkioError('EINVAL', "Cannot specify both 'driver' and 'format'");
    }
    const image = await openImage(layer, {
      filename: drive.file || undefined,
      format: drive.format,
      extraOptions: options,
      readOnly,
      snapshot,
      copyOnRead,
      cache: drive.cache,
      defaultCache: 'writeback',
      // A drive's node unmaps on discard only when asked to (QEMU's default for -drive).
      discard: 'ignore',
      backendName: id,
    });
    if (layer.findNode(id)) {
      image.blk.detach();
      throw new BlkioError('EEXIST', `Device name '${id}' conflicts with an existing node name`);
    }
    units.add(unit);
    drives.push({ ...image, id });
  }
  return drives;
}

/** What a command line defines: `--blockdev`s, `--drive`s, and the `--node` to act on. */
export interface GraphDefinitions {
  blockdevs: readonly string[];
  drives: readonly string[];
  /** A node name or drive id. */
  node?: string;
  /** `-r`: drives open read-only, and a root user on a node takes no write permission. */
  readOnly?: boolean;
  /** The cache mode of a root user on a node flushes after every write (writethrough, directsync). */
  writethrough?: boolean;
}

/** The definitions, opened. */
export interface OpenedGraph {
  drives: Drive[];
  lastBlockdev?: BlockNode;
}

/** Open the definitions: blockdevs first, then drives. */
export async function openGraph(layer: BlockLayer, defs: GraphDefinitions): Promise<OpenedGraph> {
  const lastBlockdev = defs.blockdevs.length > 0 ? await openBlockdevs(layer, defs.blockdevs) : undefined;
  return { lastBlockdev, drives: await openDrives(layer, defs.drives, defs.readOnly) };
}

/**
 * The image commands act on: the drive or node named by `--node`, else the last drive, else a
 * root user on the last blockdev. A new root user takes write permission unless `-r` or its
 * node is read-only.
 */
export function graphImage(layer: BlockLayer, graph: OpenedGraph, defs: GraphDefinitions): OpenedImage {
  const { drives } = graph;
  const named = defs.node === undefined ? undefined : drives.find((d) => d.id === defs.node);
  if (named) return named;
  if (defs.node === undefined && drives.length > 0) return drives[drives.length - 1]!;
  const node = defs.node === undefined ? graph.lastBlockdev : layer.findNodeOrThrow(defs.node);
  if (!node) throw new BlkioError('EINVAL', 'No --blockdev or --drive given');
  const perm = PERM_CONSISTENT_READ | (defs.readOnly || node.readOnly ? 0 : PERM_WRITE);
  return { blk: BlockBackend.attach(node, perm, PERM_ALL), writethrough: defs.writethrough ?? false };
}
