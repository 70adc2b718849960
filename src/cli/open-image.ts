/**
 * Turning the image arguments of qemu-io/qemu-img style command lines into a graph with a root
 * user: a filename (with -f, or probed), an --image-opts string, or extra `open -o` options,
 * plus the program-level modes (-r, -s, -C, --cache, -d, -U).
 */
import { BlkioError } from '../errors.js';
import { BlockBackend } from '../block/backend.js';
import type { BlockLayer } from '../block/graph.js';
import type { BlockNode } from '../block/node.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED } from '../block/permissions.js';
import type { FlatOptions } from '../options/types.js';
import { parseQemuOpts, qemuOptsToDict } from '../options/qemuopts.js';

export interface ImageOpenRequest {
  /** The positional argument: a filename, `json:{...}`, or with imageOpts a QemuOpts string. */
  filename?: string;
  /** `-f`: the format driver. */
  format?: string;
  /** `--image-opts`: `filename` is an option string (qemu-io: no implied key; qemu-img: implied `file`). */
  imageOpts?: boolean;
  imageOptsImpliedKey?: string;
  /** Options merged in (qemu-io `open -o`), lower priority than the image-opts string. */
  extraOptions?: FlatOptions;
  readOnly?: boolean;
  /** `-s`: writes go to a temporary overlay (needs the qcow2 driver). */
  snapshot?: boolean;
  /** `-C`: an implicit copy-on-read filter above the root node. */
  copyOnRead?: boolean;
  /** `-t`/`--cache` mode: none, off, directsync, writeback, unsafe, writethrough. */
  cache?: string;
  /** `-d`/`--discard`: ignore, off, unmap, on. */
  discard?: string;
  /** `-U`. */
  forceShare?: boolean;
  /** Default cache mode when none is given: qemu-io writethrough, qemu-img writeback. */
  defaultCache?: 'writethrough' | 'writeback';
  /** Name of the root user (`-drive id=`); unnamed by default. */
  backendName?: string;
  /** Open no backing file (QEMU's BDRV_O_NO_BACKING): backing options are then refused. */
  noBacking?: boolean;
  /** Let other users only read (QEMU's BDRV_O_NO_SHARE, qemu-img convert's sources). */
  noShare?: boolean;
  /** Opened only to be described (QEMU's BDRV_O_NO_IO, qemu-img info). */
  withoutIo?: boolean;
}

export interface OpenedImage {
  blk: BlockBackend;
  /** Writes through this backend are followed by a flush (writethrough cache mode). */
  writethrough: boolean;
}

const CACHE_MODES: Record<string, { direct: boolean; noFlush: boolean; writethrough: boolean }> = {
  none: { direct: true, noFlush: false, writethrough: false },
  off: { direct: true, noFlush: false, writethrough: false },
  directsync: { direct: true, noFlush: false, writethrough: true },
  writeback: { direct: false, noFlush: false, writethrough: false },
  unsafe: { direct: false, noFlush: true, writethrough: false },
  writethrough: { direct: false, noFlush: false, writethrough: true },
};

export function isCacheMode(mode: string): boolean {
  return mode in CACHE_MODES;
}

/** Whether a cache mode bypasses the host's page cache (cache.direct=on). */
export function isDirectCacheMode(mode: string): boolean {
  return CACHE_MODES[mode].direct;
}

/** Open the image described by `req` in `layer` and attach a root user with qemu-io's permissions. */
export async function openImage(layer: BlockLayer, req: ImageOpenRequest): Promise<OpenedImage> {
  const options: FlatOptions = { ...req.extraOptions };
  let filename = req.filename;
  if (req.imageOpts && filename !== undefined) {
    const pairs = parseQemuOpts(filename, { impliedKey: req.imageOptsImpliedKey, id: 'keep', warn: (l) => layer.warn(l) });
    Object.assign(options, qemuOptsToDict(pairs));
    filename = undefined;
  }
  if (req.format !== undefined) {
    if (options.driver !== undefined && options.driver !== req.format) {
      throw new BlkioError('EINVAL', "Cannot specify both 'driver' and 'format'");
    }
    options.driver = req.format;
  }
  const cache = CACHE_MODES[req.cache ?? req.defaultCache ?? 'writethrough'];
  if (!cache) throw new BlkioError('EINVAL', `Invalid cache option: ${req.cache}`);
  // Program-level modes are defaults: what the image options (json: included) say wins.
  const defaults: FlatOptions = {
    'cache.direct': cache.direct ? 'on' : 'off',
    'cache.no-flush': cache.noFlush ? 'on' : 'off',
    discard: req.discard ?? 'unmap',
    'read-only': req.readOnly ? 'on' : 'off',
  };
  if (req.snapshot) {
    // Below a temporary overlay the image is a backing file: read-only whatever its options say
    // (so it takes no write lock).
    delete options['read-only'];
    defaults['read-only'] = 'on';
  }
  if (req.forceShare) {
    // Only the literal `on` agrees (qemu-img's wording; qemu-io checks before calling this).
    if (options['force-share'] !== undefined && options['force-share'] !== 'on') {
      throw new BlkioError('EINVAL', '--force-share/-U conflicts with image options');
    }
    options['force-share'] = 'on';
  }

  // With -s, copy-on-read copies into the temporary overlay: the check waits for it.
  const copyOnRead = (req.copyOnRead ?? false) && !req.snapshot;
  let root: BlockNode = await layer.openNode(filename, options, {
    protocol: false, inherited: defaults, noBacking: req.noBacking, copyOnRead, withoutIo: req.withoutIo,
  });
  try {
    // With -s, copy-on-read copies into the temporary overlay, which is writable unless -r.
    if (req.snapshot) root = await openTemporaryOverlay(layer, root, req.readOnly ?? false);
    if (req.copyOnRead && root.readOnly) throw new BlkioError('EINVAL', "Can't use copy-on-read on read-only device");
    // QEMU keeps -C as a flag on the root node, so discards obey the root's discard mode.
    if (req.copyOnRead) {
      root = await layer.insertFilterAbove(root, { driver: 'copy-on-read', discard: root.discardUnmap ? 'unmap' : 'ignore' }, true);
    }
    // The user asks for what the program mode says, whatever the node's own read-only option:
    // `read-only=on` without -r fails with "Block node is read-only", as in QEMU.
    // Opened only to be described (qemu-img info), it reads nothing: no consistent read either.
    const perm = (req.withoutIo ? 0 : PERM_CONSISTENT_READ) | (req.readOnly ? 0 : PERM_WRITE);
    const shared = req.noShare ? PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED : PERM_ALL;
    return { blk: BlockBackend.attach(root, perm, shared, req.backendName), writethrough: cache.writethrough };
  } catch (e) {
    await layer.closeNode(root);
    throw e;
  }
}

/** `-s`: a qcow2 overlay in the temp directory, backed by the opened node, deleted on close. */
async function openTemporaryOverlay(layer: BlockLayer, base: BlockNode, readOnly: boolean): Promise<BlockNode> {
  const { createTemporaryOverlay } = await import('../block/snapshot.js');
  return createTemporaryOverlay(layer, base, readOnly);
}
