/**
 * `open` and `close`, and the open modes they share with the program's own options: cache,
 * discard and AIO modes, `-o`/`--image-opts` option strings, and qemu-io's open errors.
 */
import { BlkioError, toBlkioError } from '../../errors.js';
import type { BlockNode } from '../../block/node.js';
import { isCacheMode, openImage } from '../../cli/open-image.js';
import { parseQemuOpts, qemuOptsToDict } from '../../options/qemuopts.js';
import type { FlatOptions } from '../../options/types.js';
import { getopt } from './getopt.js';
import { badOption, usage, type IoCommand, type IoSession } from './session.js';

/** How an image is to be opened (qemu-io's flags and writethrough setting). */
export interface OpenMode {
  readOnly: boolean;
  snapshot: boolean;
  copyOnRead: boolean;
  forceShare: boolean;
  /** none, off, directsync, writeback, unsafe, writethrough (the default). */
  cache: string;
  /** ignore/off or unmap/on (the default). */
  discard: string;
  /** `-k`/`-i native`: Linux AIO, which QEMU's file driver allows only with O_DIRECT. */
  nativeAio: boolean;
}

export function defaultOpenMode(): OpenMode {
  return {
    readOnly: false, snapshot: false, copyOnRead: false, forceShare: false, cache: 'writethrough', discard: 'unmap', nativeAio: false,
  };
}

/** Cache modes that bypass the host page cache (cache.direct=on). */
export const DIRECT_CACHE_MODES = ['none', 'off', 'directsync'];

const DISCARD_MODES = ['off', 'ignore', 'on', 'unmap'];
export const AIO_MODES = ['threads', 'native', 'io_uring'];

/**
 * Apply one open-mode option letter (shared by the program and `open`); returns the error
 * qemu-io reports for a bad value, or undefined. Unknown letters are not handled here.
 */
export function applyModeOption(mode: OpenMode, key: string, value: string): string | undefined {
  switch (key) {
    case 'r': mode.readOnly = true; break;
    case 's': mode.snapshot = true; break;
    case 'C': mode.copyOnRead = true; break;
    case 'U': mode.forceShare = true; break;
    case 'n': mode.cache = 'none'; break;
    case 't':
      if (!isCacheMode(value)) return `Invalid cache option: ${value}`;
      mode.cache = value;
      break;
    case 'd':
      if (!DISCARD_MODES.includes(value)) return `Invalid discard option: ${value}`;
      mode.discard = value;
      break;
    // The AIO mode is how QEMU submits host I/O; blkio has one way, but keeps QEMU's checks.
    case 'i':
      if (!AIO_MODES.includes(value)) return `Invalid aio option: ${value}`;
      if (value === 'native') mode.nativeAio = true;
      break;
    case 'k': mode.nativeAio = true; break;
  }
  return undefined;
}

/**
 * A QemuOpts option string as qemu-io parses it (no implied key, short-form booleans warned
 * about), merged into `into`. Prints the error and returns false when it does not parse.
 */
export function parseOptionString(session: IoSession, text: string, into: FlatOptions, id: 'keep' | 'reject'): boolean {
  try {
    Object.assign(into, qemuOptsToDict(parseQemuOpts(text, { id, warn: (m) => session.warn(m) })));
    return true;
  } catch (e) {
    session.reportError(e);
    return false;
  }
}

/**
 * Whether the graph below `node` reads host files that take the program's AIO mode (QEMU's
 * native AIO applies to those; a node given its own `aio` option keeps it).
 */
export function usesHostFiles(node: BlockNode): boolean {
  const hostFile = (node.driver.name === 'file' || node.driver.name === 'host_device') && node.openOptions.aio === undefined;
  return hostFile || node.children.some((edge) => usesHostFiles(edge.node));
}

/**
 * qemu-io's openfile(): the image becomes the session's. `name` is the file name (undefined
 * for option strings); failures are reported (`can't open device <name>: ...`) and give false.
 */
export async function openFile(session: IoSession, name: string | undefined, options: FlatOptions, mode: OpenMode): Promise<boolean> {
  if (session.image) {
    session.errorReport("file open already, try 'help close'");
    return false;
  }
  options = { ...options };
  if (mode.forceShare) {
    if (options['force-share'] !== undefined && options['force-share'] !== 'on') {
      session.errorReport('-U conflicts with image options');
      return false;
    }
    options['force-share'] = 'on';
  }
  try {
    const image = await openImage(session.layer, {
      filename: name,
      extraOptions: options,
      readOnly: mode.readOnly,
      snapshot: mode.snapshot,
      copyOnRead: mode.copyOnRead,
      cache: mode.cache,
      discard: mode.discard,
      defaultCache: 'writethrough',
    });
    if (mode.nativeAio && !DIRECT_CACHE_MODES.includes(mode.cache) && usesHostFiles(image.blk.node)) {
      image.blk.detach();
      await session.layer.closeNode(image.blk.node);
      throw new BlkioError('EINVAL', 'aio=native was specified, but it requires cache.direct=on, which was not specified.');
    }
    session.image = image;
    return true;
  } catch (e) {
    const error = toBlkioError(e);
    session.reportError(error.prepend(name === undefined ? "can't open: " : `can't open device ${name}: `));
    return false;
  }
}

export const openCommand: IoCommand = {
  name: 'open',
  altname: 'o',
  argmin: 1,
  argmax: -1,
  noFileOk: true,
  args: '[-rsCnkU] [-t cache] [-d discard] [-o options] [path]',
  oneline: 'open the file specified by path',
  help: `
 opens a new file in the requested mode

 Example:
 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached

 Opens a file for subsequent use by all of the other qemu-io commands.
 -r, -- open file read-only
 -s, -- use snapshot file
 -C, -- use copy-on-read
 -n, -- disable host cache, short for -t none
 -U, -- force shared permissions
 -k, -- use kernel AIO implementation (Linux only, prefer use of -i)
 -i, -- use AIO mode (threads, native or io_uring)
 -t, -- use the given cache mode for the image
 -d, -- use the given discard mode for the image
 -o, -- options to be given to the block driver
`,
  async run(session, argv) {
    const mode = defaultOpenMode();
    const options: FlatOptions = {};
    const { items, operands } = getopt(argv, { short: 'snCro:ki:t:d:U' });
    for (const item of items) {
      if (item.kind === 'error') return badOption(session, openCommand, item.message);
      if (item.key === 'o') {
        if (session.imageOpts) {
          session.print("--image-opts and 'open -o' are mutually exclusive");
          return -1;
        }
        if (!parseOptionString(session, item.value, options, 'reject')) return -1;
        continue;
      }
      const error = applyModeOption(mode, item.key, item.value);
      if (error !== undefined) {
        session.errorReport(error);
        return -1;
      }
    }
    let path: string | undefined = operands[0];
    if (session.imageOpts && operands.length === 1) {
      if (!parseOptionString(session, operands[0], options, 'reject')) return -1;
      path = undefined;
    } else if (operands.length > 1) {
      return usage(session, openCommand);
    }
    return (await openFile(session, path, options, mode)) ? 0 : -1;
  },
};

export const closeCommand: IoCommand = {
  name: 'close',
  altname: 'c',
  argmin: 0,
  argmax: 0,
  oneline: 'close the current open file',
  async run(session) {
    await session.closeImage();
    return 0;
  },
};
