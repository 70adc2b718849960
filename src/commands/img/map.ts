/**
 * `blkio img map [--image-opts] [-f fmt] [--start-offset=N] [--max-length=N] [--output=ofmt] [-U] filename`
 *
 * Walks the image in pieces of at most 1 GiB; for each piece asks the layers from the top
 * down (filters skipped) until one knows the data or zero state, and records which layer
 * (depth) and host file answered. Neighbouring extents with equal state merge.
 */
import { BlkioError } from '../../errors.js';
import type { BlockNode } from '../../block/node.js';
import { STATUS_ALLOCATED, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_ZERO } from '../../block/flags.js';
import {
  UsageError, backingLayer, badOption, imgCvtnum, newLayer, openImg, parseOutputFormat, runSubcommand, scanImgArgs,
  skipFilters, type OutputFormat,
} from './common.js';
import { nodeBlockStatus, nodeBlockStatusNow } from '../../block/io.js';
import type { BlockStatusResult } from '../../block/driver.js';
import { printHelp } from './help.js';
import { writeStdoutBytes } from '../../cli/output.js';

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
  return entryOf(walk.offset, walk.bytes, walk.depth, known ? r.status : 0, r.map ?? walk.offset, r.file);
}

/** The entry of a layer's extent whose status is known (or 0 when no layer knows it). */
function entryOf(start: number, length: number, depth: number, status: number, map: number, file: BlockNode | undefined): MapEntry {
  const hasOffset = (status & STATUS_OFFSET_VALID) !== 0;
  return {
    start, length, depth,
    present: (status & STATUS_ALLOCATED) !== 0, zero: (status & STATUS_ZERO) !== 0, data: (status & STATUS_DATA) !== 0,
    offset: hasOffset ? map : undefined, filename: hasOffset ? file?.filename : undefined,
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

const ascii = (text: string): Uint8Array => Buffer.from(text, 'latin1');
const JSON_START = ascii('{ "start": ');
const JSON_LENGTH = ascii(', "length": ');
const JSON_DEPTH = ascii(', "depth": ');
/** `, "present": ..., "zero": ..., "data": ...` for each combination, indexed by jsonFlagsIndex. */
const JSON_FLAGS = [false, true].flatMap((present) => [false, true].flatMap((zero) => [false, true].map((data) =>
  ascii(`, "present": ${present}, "zero": ${zero}, "data": ${data}`))));
const JSON_OFFSET = ascii(', "offset": ');
const JSON_LAST = ascii('}');
const JSON_NEXT = ascii('},\n');

function writeJsonEntry(out: ChunkedOutput, e: MapEntry, last: boolean): void {
  out.bytes(JSON_START);
  out.decimal(e.start);
  out.bytes(JSON_LENGTH);
  out.decimal(e.length);
  out.bytes(JSON_DEPTH);
  out.decimal(e.depth);
  out.bytes(JSON_FLAGS[(e.present ? 4 : 0) + (e.zero ? 2 : 0) + (e.data ? 1 : 0)]);
  if (e.offset !== undefined) {
    out.bytes(JSON_OFFSET);
    out.decimal(e.offset);
  }
  out.bytes(last ? JSON_LAST : JSON_NEXT);
}

export function imgMap(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    const { options, operands, objects } = scanImgArgs('map', argv, ':f:hU', [
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
    const layer = newLayer(objects);
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
/** Bytes a UTF-16 code unit can take in UTF-8. */
const MAX_UTF8_PER_UNIT = 3;
/** Digits of the largest safe integer. */
const MAX_DECIMAL_DIGITS = 16;

/**
 * Output encoded straight into byte chunks: no per-line strings to concatenate, flatten and
 * encode again. A full chunk goes to stdout at once (a slow reader holds the walk up, as it
 * does qemu-img's; a closed one drops the output).
 */
class ChunkedOutput {
  private chunk = Buffer.allocUnsafe(OUTPUT_CHUNK);
  private used = 0;

  bytes(bytes: Uint8Array): void {
    this.makeRoom(bytes.length);
    this.chunk.set(bytes, this.used);
    this.used += bytes.length;
  }

  text(text: string): void {
    const most = text.length * MAX_UTF8_PER_UNIT;
    if (most > OUTPUT_CHUNK) {
      this.flush();
      this.send(Buffer.from(text));
      return;
    }
    this.makeRoom(most);
    this.used += this.chunk.write(text, this.used);
  }

  /** A non-negative safe integer in decimal. */
  decimal(n: number): void {
    this.makeRoom(MAX_DECIMAL_DIGITS);
    let digits = 1;
    for (let power = 10; power <= n; power *= 10) digits++;
    let pos = this.used + digits;
    this.used = pos;
    do {
      this.chunk[--pos] = 0x30 + (n % 10);
      n = Math.floor(n / 10);
    } while (n > 0);
  }

  flush(): void {
    if (this.used === 0) return;
    const full = this.chunk.subarray(0, this.used);
    this.chunk = Buffer.allocUnsafe(OUTPUT_CHUNK);
    this.used = 0;
    this.send(full);
  }

  private makeRoom(bytes: number): void {
    if (this.used + bytes > OUTPUT_CHUNK) this.flush();
  }

  private send(bytes: Uint8Array): void {
    writeStdoutBytes(bytes);
  }
}

/** Extents merged while they continue each other, each printed once the next one differs. */
class MapPrinter {
  private current: MapEntry;

  constructor(private readonly out: ChunkedOutput, private readonly output: OutputFormat, start: number) {
    this.current = { start, length: 0, depth: 0, present: false, zero: false, data: false };
    out.text(output === 'human' ? `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n` : '[');
  }

  /** Where the next extent starts. */
  get end(): number {
    return this.current.start + this.current.length;
  }

  add(next: MapEntry): void {
    if (mergeable(this.current, next)) {
      this.current.length += next.length;
      return;
    }
    if (this.current.length > 0) this.print(false);
    this.current = next;
  }

  finish(): void {
    this.print(true);
    if (this.output === 'json') this.out.text(']\n');
  }

  private print(last: boolean): void {
    if (this.output === 'human') this.out.text(humanLine(this.current));
    else writeJsonEntry(this.out, this.current, last);
  }
}

/**
 * Map and print extents up to `length` for as long as the metadata is cached. A plain loop
 * (no await in it) is what V8 optimises soonest: most of a map's time.
 */
function mapWhileCached(node: BlockNode, printer: MapPrinter, length: number): void {
  for (let offset = printer.end; offset < length; offset = printer.end) {
    const next = mapEntryNow(node, offset, Math.min(PROBE_LIMIT, length - offset));
    if (!next) return;
    printer.add(next);
  }
}

async function dumpMap(node: BlockNode, output: OutputFormat, startOffset: number, maxLength: number | undefined): Promise<number> {
  let length = node.getLength();
  if (maxLength !== undefined) length = Math.min(startOffset + maxLength, length);
  const out = new ChunkedOutput();
  const printer = new MapPrinter(out, output, startOffset);
  try {
    for (;;) {
      mapWhileCached(node, printer, length);
      const offset = printer.end;
      if (offset >= length) break;
      let next: MapEntry;
      try {
        next = await mapEntryAt(node, offset, Math.min(PROBE_LIMIT, length - offset));
      } catch (e) {
        throw new BlkioError('EIO', `Could not read file metadata: ${e instanceof BlkioError ? e.strerror : String(e)}`);
      }
      printer.add(next);
    }
    printer.finish();
  } finally {
    // What was printed before an error still comes out ahead of the error message.
    out.flush();
  }
  return 0;
}
