/**
 * `blkio img map [--image-opts] [-f fmt] [--start-offset=N] [--max-length=N] [--output=ofmt] [-U] filename`
 *
 * Walks the image in pieces of at most 1 GiB; for each piece asks the layers from the top
 * down (filters skipped) until one knows the data or zero state, and records which layer
 * (depth) and host file answered. Neighbouring extents with equal state merge.
 */
import { once } from 'node:events';
import { BlkioError } from '../../errors.js';
import type { BlockNode } from '../../block/node.js';
import { STATUS_ALLOCATED, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_ZERO } from '../../block/flags.js';
import {
  UsageError, backingLayer, badOption, imgCvtnum, newLayer, openImg, parseOutputFormat, runSubcommand, scanImgArgs,
  skipFilters, writeOut, type OutputFormat,
} from './common.js';
import { nodeBlockStatus, nodeBlockStatusNow } from '../../block/io.js';
import type { BlockStatusResult } from '../../block/driver.js';
import { printHelp } from './help.js';

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
  /** The host file the offset is in (only with an offset). */
  filename?: string;
}

const PROBE_LIMIT = 1 << 30;

/** A walk down the chain at one offset: the layer to ask next and how far its answer may reach. */
interface ChainWalk {
  layer: BlockNode;
  depth: number;
  offset: number;
  bytes: number;
}

function startWalk(top: BlockNode, offset: number, bytes: number): ChainWalk {
  return { layer: skipFilters(top), depth: 0, offset, bytes };
}

/** The entry when the layer that answered knows the data or zero state or is the last; else the walk moves down. */
function takeAnswer(walk: ChainWalk, r: BlockStatusResult): MapEntry | undefined {
  walk.bytes = r.pnum;
  const known = (r.status & (STATUS_ZERO | STATUS_DATA)) !== 0;
  const below = known ? undefined : backingLayer(walk.layer);
  if (below) {
    walk.layer = below;
    walk.depth++;
    return undefined;
  }
  const status = known ? r.status : 0;
  const hasOffset = (status & STATUS_OFFSET_VALID) !== 0;
  return {
    start: walk.offset, length: walk.bytes, depth: walk.depth,
    present: (status & STATUS_ALLOCATED) !== 0, zero: (status & STATUS_ZERO) !== 0, data: (status & STATUS_DATA) !== 0,
    offset: hasOffset ? r.map ?? walk.offset : undefined, filename: hasOffset ? r.file?.filename : undefined,
  };
}

/** mapEntryAt without waiting when the metadata it needs is in memory; undefined otherwise. */
export function mapEntryNow(top: BlockNode, offset: number, bytes: number): MapEntry | undefined {
  const walk = startWalk(top, offset, bytes);
  for (;;) {
    const r = nodeBlockStatusNow(walk.layer, walk.offset, walk.bytes);
    if (!r) return undefined;
    const entry = takeAnswer(walk, r);
    if (entry) return entry;
  }
}

/** The status of the first layer that has [offset, offset+bytes) as data or zero. */
export async function mapEntryAt(top: BlockNode, offset: number, bytes: number): Promise<MapEntry> {
  const walk = startWalk(top, offset, bytes);
  for (;;) {
    const entry = takeAnswer(walk, await nodeBlockStatus(walk.layer, walk.offset, walk.bytes));
    if (entry) return entry;
  }
}

function mergeable(a: MapEntry, b: MapEntry): boolean {
  return a.length > 0 && a.zero === b.zero && a.data === b.data && a.depth === b.depth && a.present === b.present
    && a.filename === b.filename && (a.offset === undefined) === (b.offset === undefined)
    && (a.offset === undefined || a.offset + a.length === b.offset);
}

function humanLine(e: MapEntry): string {
  if (e.data && e.offset === undefined) throw new BlkioError('ENOTSUP', 'File contains external, encrypted or compressed clusters.');
  if (!e.data || e.zero) return '';
  const hex = (n: number): string => (n === 0 ? '0' : `0x${n.toString(16)}`).padEnd(16);
  return `${hex(e.start)}${hex(e.length)}${hex(e.offset ?? 0)}${e.filename ?? ''}\n`;
}

function jsonEntry(e: MapEntry): string {
  return `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, ` +
    `"zero": ${e.zero}, "data": ${e.data}${e.offset === undefined ? '' : `, "offset": ${e.offset}`}}`;
}

export function imgMap(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    const { options, operands } = scanImgArgs('map', argv, ':f:hU', [
      { name: 'format', hasArg: true, key: 'f' },
      { name: 'output', hasArg: true, key: 'output' },
      { name: 'image-opts', hasArg: false, key: 'image-opts' },
      { name: 'force-share', hasArg: false, key: 'U' },
      { name: 'start-offset', hasArg: true, key: 'start-offset' },
      { name: 'max-length', hasArg: true, key: 'max-length' },
    ]);
    let format: string | undefined;
    let output: string | undefined;
    let imageOpts = false;
    let forceShare = false;
    let startOffset = 0;
    let maxLength: number | undefined;
    for (const item of options) {
      switch (item.key) {
        case 'h': return printHelp();
        case 'f': format = item.value; break;
        case 'output': output = item.value; break;
        case 'image-opts': imageOpts = true; break;
        case 'U': forceShare = true; break;
        case 'start-offset': startOffset = imgCvtnum('start offset', item.value); break;
        case 'max-length': maxLength = imgCvtnum('max length', item.value); break;
        default: badOption(item);
      }
    }
    if (operands.length !== 1) throw new UsageError('Expecting one image file name');
    const outputFormat: OutputFormat = output === undefined ? 'human' : parseOutputFormat(output);
    if (imageOpts && format !== undefined) throw new BlkioError('EINVAL', '--image-opts and --format are mutually exclusive');
    const layer = newLayer();
    try {
      const blk = await openImg(layer, { filename: operands[0], format, imageOpts, readOnly: true, forceShare });
      return await dumpMap(blk.node, outputFormat, startOffset, maxLength);
    } finally {
      await layer.closeAll();
    }
  });
}

/** Output collected into chunks: one write per line would cost more than the map walk itself. */
const OUTPUT_CHUNK = 64 * 1024;

async function dumpMap(node: BlockNode, output: OutputFormat, startOffset: number, maxLength: number | undefined): Promise<number> {
  let length = node.getLength();
  if (maxLength !== undefined) length = Math.min(startOffset + maxLength, length);
  let pending = '';
  /** Write a full chunk, waiting while a slow reader (a pipe) still holds the last ones. */
  const flushChunk = (): Promise<unknown> | undefined => {
    if (pending.length < OUTPUT_CHUNK) return undefined;
    const writable = process.stdout.write(pending);
    pending = '';
    return writable ? undefined : once(process.stdout, 'drain');
  };
  const print = (e: MapEntry, last: boolean): void => {
    pending += output === 'human' ? humanLine(e) : jsonEntry(e) + (last ? '' : ',\n');
  };
  pending = output === 'human' ? `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n` : '[';
  try {
    let current: MapEntry = { start: startOffset, length: 0, depth: 0, present: false, zero: false, data: false };
    while (current.start + current.length < length) {
      const offset = current.start + current.length;
      let next: MapEntry;
      try {
        // Most extents come from cached metadata: only a walk that has to wait costs a promise.
        const bytes = Math.min(PROBE_LIMIT, length - offset);
        next = mapEntryNow(node, offset, bytes) ?? await mapEntryAt(node, offset, bytes);
      } catch (e) {
        throw new BlkioError('EIO', `Could not read file metadata: ${e instanceof BlkioError ? e.strerror : String(e)}`);
      }
      if (mergeable(current, next)) {
        current.length += next.length;
        continue;
      }
      if (current.length > 0) print(current, false);
      current = next;
      const draining = flushChunk();
      if (draining) await draining;
    }
    print(current, true);
    if (output === 'json') pending += ']\n';
  } finally {
    // What was printed before an error still comes out ahead of the error message.
    writeOut(pending);
  }
  return 0;
}
