/**
 * `blkio img map [--image-opts] [-f fmt] [--start-offset=N] [--max-length=N] [--output=ofmt] [-U] filename`
 *
 * Walks the image in pieces of at most 1 GiB; for each piece asks the layers from the top
 * down (filters skipped) until one knows the data or zero state, and records which layer
 * (depth) and host file answered. Neighbouring extents with equal state merge.
 */
import { BlkioError } from '../../errors.js';
import type { BlockBackend } from '../../block/backend.js';
import type { BlockNode } from '../../block/node.js';
import { STATUS_ALLOCATED, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_ZERO } from '../../block/flags.js';
import {
  backingLayer, imgCvtnum, oneImageName, openImg, parseOutputFormat, runSubcommand, skipFilters, withLayer, type OutputFormat,
} from './common.js';
import { FORCE_SHARE_OPTION, FORMAT_OPTION, IMAGE_OPTS_OPTION, OUTPUT_OPTION, parseImgArgs } from './options.js';
import { nodeBlockStatus, nodeBlockStatusListNow, nodeBlockStatusNow } from '../../block/io.js';
import { StatusList, type BlockStatusResult } from '../../block/driver.js';
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
/** Answers per block-status call: a qcow2 L2 slice of 64 KiB clusters holds 8192. */
const STATUS_LIST_CAPACITY = 8192;

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
  if (r.pnum === 0) throw layerEndError();
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

/**
 * A layer that ends before the image (blkverify's raw image shorter than its test image) has no
 * status there: QEMU 7.2 asserts, blkio fails instead of asking again forever.
 */
function layerEndError(): BlkioError {
  return new BlkioError('EIO', 'Could not read file metadata: Input/output error');
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

function humanLine(start: number, length: number, status: number, offset: number, filename: string | undefined): string {
  const data = (status & STATUS_DATA) !== 0;
  if (data && !(status & STATUS_OFFSET_VALID)) throw new BlkioError('ENOTSUP', 'File contains external, encrypted or compressed clusters.');
  if (!data || status & STATUS_ZERO) return '';
  const hex = (n: number): string => (n === 0 ? '0' : `0x${n.toString(16)}`).padEnd(16);
  return `${hex(start)}${hex(length)}${hex(offset)}${filename ?? ''}\n`;
}

const ascii = (text: string): Uint8Array => Buffer.from(text, 'latin1');
const JSON_START = ascii('{ "start": ');
const JSON_LENGTH = ascii(', "length": ');
const JSON_DEPTH = ascii(', "depth": ');
/** `, "present": ..., "zero": ..., "data": ...` for each combination of STATUS_ALLOCATED, _ZERO and _DATA. */
const JSON_FLAGS = Array.from({ length: STATUS_ALLOCATED * 2 }, (_, status) => ascii(
  `, "present": ${(status & STATUS_ALLOCATED) !== 0}, "zero": ${(status & STATUS_ZERO) !== 0}, "data": ${(status & STATUS_DATA) !== 0}`));
const JSON_OFFSET = ascii(', "offset": ');
const JSON_LAST = ascii('}');
const JSON_NEXT = ascii('},\n');
/** The longest JSON line: five numbers of up to 16 digits and the longest texts. */
const JSON_MAX_LINE = 256;

function writeJsonEntry(out: ChunkedOutput, start: number, length: number, depth: number, status: number, offset: number, last: boolean): void {
  out.makeRoom(JSON_MAX_LINE);
  out.bytes(JSON_START);
  out.decimal(start);
  out.bytes(JSON_LENGTH);
  out.decimal(length);
  out.bytes(JSON_DEPTH);
  out.decimal(depth);
  out.bytes(JSON_FLAGS[status & (STATUS_ALLOCATED | STATUS_ZERO | STATUS_DATA)]);
  if (status & STATUS_OFFSET_VALID) {
    out.bytes(JSON_OFFSET);
    out.decimal(offset);
  }
  out.bytes(last ? JSON_LAST : JSON_NEXT);
}

export function imgMap(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    let startOffset = 0;
    let maxLength: number | undefined;
    const { format, imageOpts, forceShare, output, operands, objects } = parseImgArgs('map', argv, {
      short: ':f:s:l:hU',
      long: [
        FORMAT_OPTION, OUTPUT_OPTION, IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION,
        { name: 'start-offset', hasArg: true, key: 's' }, { name: 'max-length', hasArg: true, key: 'l' },
      ],
      own: (item) => {
        switch (item.key) {
          case 's': startOffset = imgCvtnum('start offset', item.value); return true;
          case 'l': maxLength = imgCvtnum('max length', item.value); return true;
          default: return false;
        }
      },
    });
    const filename = oneImageName(operands);
    const outputFormat = parseOutputFormat(output);
    return withLayer(objects, async (layer) => {
      const blk = await openImg(layer, { filename, format, imageOpts, readOnly: true, forceShare });
      return dumpMap(blk, filename, outputFormat, startOffset, maxLength);
    });
  });
}

/** Output collected into chunks: one write per line would cost more than the map walk itself. */
const OUTPUT_CHUNK = 64 * 1024;
/** Bytes a UTF-16 code unit can take in UTF-8. */
const MAX_UTF8_PER_UNIT = 3;
/** The two ASCII digits of 0 to 99. */
const DIGIT_PAIRS = ascii(Array.from({ length: 100 }, (_, n) => String(n).padStart(2, '0')).join(''));
/** 10^0 to 10^15: 10^15 <= 2^53 < 10^16. */
const POWERS_OF_10 = Float64Array.from({ length: 16 }, (_, i) => 10 ** i);

/**
 * Output encoded straight into byte chunks: no per-line strings to concatenate, flatten and
 * encode again. A full chunk goes to stdout at once (a slow reader holds the walk up, as it
 * does qemu-img's; a closed one drops the output). bytes() and decimal() write into room
 * made beforehand.
 */
class ChunkedOutput {
  private readonly chunk = Buffer.allocUnsafe(OUTPUT_CHUNK);
  private used = 0;

  bytes(bytes: Uint8Array): void {
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

  /**
   * A non-negative safe integer in decimal, two digits at a time. Floating-point arithmetic
   * throughout: offsets pass 2^31 halfway through a large image, which would make V8 throw
   * away code it optimised for small integers.
   */
  decimal(n: number): void {
    if (n >= 1e16) {
      // Only a corrupt table maps this far; beyond 2^53 only BigInt prints the exact digits.
      this.used += this.chunk.write(BigInt(n).toString(), this.used, 'latin1');
      return;
    }
    let digits = 1;
    while (digits < POWERS_OF_10.length && n >= POWERS_OF_10[digits]) digits++;
    const chunk = this.chunk;
    let pos = this.used + digits;
    this.used = pos;
    while (n >= 100) {
      const rest = Math.floor(n / 100);
      const pair = (n - rest * 100) * 2;
      n = rest;
      chunk[--pos] = DIGIT_PAIRS[pair + 1];
      chunk[--pos] = DIGIT_PAIRS[pair];
    }
    if (n >= 10) {
      chunk[--pos] = DIGIT_PAIRS[n * 2 + 1];
      chunk[--pos] = DIGIT_PAIRS[n * 2];
    } else {
      chunk[--pos] = 0x30 + n;
    }
  }

  /** Sends what the chunk holds; the chunk is then filled again (writeStdoutBytes does not keep it). */
  flush(): void {
    if (this.used === 0) return;
    const full = this.chunk.subarray(0, this.used);
    this.used = 0;
    this.send(full);
  }

  makeRoom(bytes: number): void {
    if (this.used + bytes > OUTPUT_CHUNK) this.flush();
  }

  private send(bytes: Uint8Array): void {
    writeStdoutBytes(bytes);
  }
}

/** The status bits an extent prints (and merges) by. */
const PRINTED_STATUS = STATUS_ALLOCATED | STATUS_ZERO | STATUS_DATA | STATUS_OFFSET_VALID;

/** Where MapPrinter keeps an extent's numbers. */
const START = 0;
const LENGTH = 1;
const OFFSET = 2;

/** Extents merged while they continue each other, each printed once the next one differs. */
class MapPrinter {
  /**
   * The extent being merged: start, length and host offset (with STATUS_OFFSET_VALID), stored
   * as doubles. They pass 2^31 on large images, and V8 throws away code that it optimised for
   * the small integers it saw first.
   */
  private readonly extent = new Float64Array(3);
  private depth = 0;
  /** PRINTED_STATUS bits. */
  private status = 0;
  private filename: string | undefined;

  constructor(private readonly out: ChunkedOutput, private readonly output: OutputFormat, start: number) {
    this.extent[START] = start;
    out.text(output === 'human' ? `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n` : '[');
  }

  /** Where the next extent starts. */
  get end(): number {
    return this.extent[START] + this.extent[LENGTH];
  }

  /** The extent from `end` on: `status` is the layer's (0: no layer knows it), `filename` holds `offset`. */
  add(length: number, depth: number, status: number, offset: number, filename: string | undefined): void {
    status &= PRINTED_STATUS;
    if (!(status & STATUS_OFFSET_VALID)) filename = undefined;
    const extent = this.extent;
    const current = extent[LENGTH];
    if (current > 0 && status === this.status && depth === this.depth && filename === this.filename
      && (!(status & STATUS_OFFSET_VALID) || extent[OFFSET] + current === offset)) {
      extent[LENGTH] = current + length;
      return;
    }
    if (current > 0) {
      this.print(false);
      extent[START] += current;
    }
    extent[LENGTH] = length;
    extent[OFFSET] = offset;
    this.depth = depth;
    this.status = status;
    this.filename = filename;
  }

  addEntry(e: MapEntry): void {
    const status = (e.present ? STATUS_ALLOCATED : 0) | (e.zero ? STATUS_ZERO : 0) | (e.data ? STATUS_DATA : 0)
      | (e.offset !== undefined ? STATUS_OFFSET_VALID : 0);
    this.add(e.length, e.depth, status, e.offset ?? 0, e.filename);
  }

  finish(): void {
    this.print(true);
    if (this.output === 'json') this.out.text(']\n');
  }

  private print(last: boolean): void {
    const extent = this.extent;
    if (this.output === 'human') {
      // Most extents print nothing (no data, or zeroes).
      const line = humanLine(extent[START], extent[LENGTH], this.status, extent[OFFSET], this.filename);
      if (line) this.out.text(line);
    } else {
      writeJsonEntry(this.out, extent[START], extent[LENGTH], this.depth, this.status, extent[OFFSET], last);
    }
  }
}

/**
 * Map and print extents up to `length` for as long as the metadata is cached: the top layer's
 * answers come many at a time, and only what it does not know is asked further down.
 */
function mapWhileCached(node: BlockNode, printer: MapPrinter, length: number, list: StatusList): void {
  const top = skipFilters(node);
  for (let offset = printer.end; offset < length; offset = printer.end) {
    nodeBlockStatusListNow(top, offset, Math.min(PROBE_LIMIT, length - offset), list);
    if (list.count === 0 || !printStatusList(top, printer, list)) return;
    if (printer.end === offset) throw layerEndError();
  }
}

/**
 * Print the top layer's answers, asking the layers below where it knows neither data nor
 * zeroes; false when one of them would have to wait. The hot loop of a map: kept apart so
 * that V8 optimises it on its own.
 */
function printStatusList(top: BlockNode, printer: MapPrinter, list: StatusList): boolean {
  const below = backingLayer(top);
  const filename = list.file?.filename;
  for (let i = 0; i < list.count; i++) {
    const status = list.status[i];
    const pnum = list.pnum[i];
    if (status & (STATUS_ZERO | STATUS_DATA) || !below) {
      printer.add(pnum, 0, status & (STATUS_ZERO | STATUS_DATA) ? status : 0, list.map[i], filename);
      continue;
    }
    const entry = mapEntryNow(top, printer.end, pnum);
    if (!entry) return false;
    printer.addEntry(entry);
    // A layer below answered for less: the list goes on from where that answer ends.
    if (entry.length < pnum) return true;
  }
  return true;
}

async function dumpMap(blk: BlockBackend, filename: string, output: OutputFormat, startOffset: number, maxLength: number | undefined): Promise<number> {
  const node = blk.node;
  const out = new ChunkedOutput();
  const printer = new MapPrinter(out, output, startOffset);
  const list = new StatusList(STATUS_LIST_CAPACITY);
  try {
    // As qemu-img, the header is out before the length is asked for (a drive without a medium has none).
    let length: number;
    try {
      length = blk.getLength();
    } catch {
      throw new BlkioError('ENOMEDIUM', `Failed to get size for '${filename}'`);
    }
    if (maxLength !== undefined) length = Math.min(startOffset + maxLength, length);
    for (;;) {
      mapWhileCached(node, printer, length, list);
      const offset = printer.end;
      if (offset >= length) break;
      let next: MapEntry;
      try {
        next = await mapEntryAt(node, offset, Math.min(PROBE_LIMIT, length - offset));
      } catch (e) {
        throw new BlkioError('EIO', `Could not read file metadata: ${e instanceof BlkioError ? e.strerror : String(e)}`);
      }
      printer.addEntry(next);
    }
    printer.finish();
  } finally {
    // What was printed before an error still comes out ahead of the error message.
    out.flush();
  }
  return 0;
}
