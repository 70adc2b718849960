/**
 * QemuOpts option strings (`-drive`, qemu-io `--image-opts` / `open -o`, qemu-img
 * `--image-opts` and `-o`): comma-separated `key=value` items whose values stay strings, plus
 * the typed value parsers used when options are validated, in each wording QEMU uses.
 */

import { BlkioError } from '../errors.js';
import { formatGeneral, parseSizeBigInt, scanUnsigned, SizeError } from './size.js';
import type { FlatOptions, FlatValue, WarningSink } from './types.js';

export type QemuOptPair = [key: string, value: string];

export interface QemuOptsParseOptions {
  /** Key of a first item without `=` (qemu-img `--image-opts` uses `file`); else it is a flag. */
  impliedKey?: string;
  /**
   * Where the deprecation warnings of short-form booleans (`foo`, `nofoo`) go. Only the parsers
   * QEMU runs "noisily" warn (qemu-io / qemu-img `--image-opts`, `open -o`); without a sink
   * nothing is reported, as for qemu-img `-o`.
   */
  warn?: WarningSink;
  /**
   * What an `id=` item means: 'drop' (default) ignores it (qemu-img `-o`); 'keep' validates it
   * as an identifier and returns it as the first pair (qemu-io `--image-opts`, where the block
   * layer then rejects it); 'reject' refuses it (merging lists such as qemu-io `open -o`).
   */
  id?: 'drop' | 'keep' | 'reject';
}

interface QemuOptsItem {
  key: string;
  value: string;
  /** The bare word for a short-form boolean (`nofoo`), absent for `key=value` items. */
  flag?: string;
}

/** Splits an option string into items; `,,` inside a value is a literal comma. */
function splitItems(text: string, impliedKey: string | undefined): QemuOptsItem[] {
  const items: QemuOptsItem[] = [];
  let pos = 0;
  while (pos < text.length) {
    const nameEnd = findNameEnd(text, pos);
    let item: QemuOptsItem;
    if (text[nameEnd] === '=') {
      const value = readOptionValue(text, nameEnd + 1);
      item = { key: text.slice(pos, nameEnd), value: value.value };
      pos = value.end;
    } else if (impliedKey !== undefined && items.length === 0) {
      const value = readOptionValue(text, pos);
      item = { key: impliedKey, value: value.value };
      pos = value.end;
    } else {
      const word = text.slice(pos, nameEnd);
      item = word.startsWith('no')
        ? { key: word.slice(2), value: 'off', flag: word }
        : { key: word, value: 'on', flag: word };
      pos = nameEnd;
    }
    items.push(item);
    if (text[pos] === ',') pos++;
  }
  return items;
}

/** Where the name starting at `from` ends: the next `=` or `,`, else the end (shared with keyval). */
export function findNameEnd(text: string, from: number): number {
  let pos = from;
  while (pos < text.length && text[pos] !== '=' && text[pos] !== ',') pos++;
  return pos;
}

/**
 * A value runs to the next single comma; `,,` stands for one comma. `end` is the position of
 * the terminating comma, or the end of the text (shared with keyval).
 */
export function readOptionValue(text: string, start: number): { value: string; end: number } {
  let value = '';
  let pos = start;
  for (;;) {
    const comma = text.indexOf(',', pos);
    if (comma < 0) return { value: value + text.slice(pos), end: text.length };
    if (text[comma + 1] !== ',') return { value: value + text.slice(pos, comma), end: comma };
    value += text.slice(pos, comma + 1);
    pos = comma + 2;
  }
}

function isHelpWord(word: string): boolean {
  return word === 'help' || word === '?';
}

function shortFormWarning(item: QemuOptsItem): string {
  // QEMU suggests the real option name for the socket chardev's `delay` flag.
  const replacement = item.key === 'delay'
    ? `nodelay=${item.value === 'off' ? 'on' : 'off'}`
    : `${item.key}=${item.value}`;
  return `warning: short-form boolean option '${item.flag}' deprecated\nPlease use ${replacement} instead`;
}

/** QEMU's id_wellformed(): a letter, then letters, digits, `-`, `.`, `_`. */
function isWellFormedId(id: string): boolean {
  return /^[A-Za-z][A-Za-z0-9._-]*$/.test(id);
}

/**
 * Parses a QemuOpts string into ordered key/value pairs (repeated keys kept, in order).
 * A bare word is a boolean flag: `foo` -> foo=on, `nofoo` -> foo=off (with a deprecation
 * warning, except for `help`/`?`, which become `help=on` — callers with a typed list check
 * hasHelpOption first, as QEMU does). An empty item (`,a=b`) is the flag ''.
 */
export function parseQemuOpts(text: string, options: QemuOptsParseOptions = {}): QemuOptPair[] {
  const idMode = options.id ?? 'drop';
  // QEMU looks for the id first, reading every item as key=value or flag (no implied key).
  const id = splitItems(text, undefined).find((item) => item.key === 'id')?.value;
  if (id !== undefined && idMode === 'reject') throw new BlkioError('EINVAL', "Invalid parameter 'id'");
  if (id !== undefined && idMode === 'keep' && !isWellFormedId(id)) {
    throw new BlkioError('EINVAL', "Parameter 'id' expects an identifier",
      ["Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."]);
  }
  const pairs: QemuOptPair[] = id !== undefined && idMode === 'keep' ? [['id', id]] : [];
  for (const item of splitItems(text, options.impliedKey)) {
    if (item.flag !== undefined && !isHelpWord(item.flag)) options.warn?.(shortFormWarning(item));
    if (item.key !== 'id') pairs.push([item.key, item.value]);
  }
  return pairs;
}

/** QemuOpts pairs as a flat option dictionary: the last of repeated keys wins. */
export function qemuOptsToDict(pairs: Iterable<QemuOptPair>): FlatOptions {
  const dict: FlatOptions = {};
  for (const [key, value] of pairs) dict[key] = value;
  return dict;
}

export function parseQemuOptsDict(text: string, options: QemuOptsParseOptions = {}): FlatOptions {
  return qemuOptsToDict(parseQemuOpts(text, options));
}

/** True if the string holds a bare `help` or `?` item (qemu-img `-o help` prints the option list). */
export function hasHelpOption(text: string): boolean {
  return splitItems(text, undefined).some((item) => item.flag !== undefined && isHelpWord(item.flag));
}

/**
 * qemu-img's check of each `-o` argument before the arguments are joined with commas: not empty,
 * not starting with a comma, and not ending in an unescaped comma. Failing lists are reported
 * as `Invalid option list: <text>`.
 */
export function isValidOptionList(text: string): boolean {
  if (text === '' || text.startsWith(',')) return false;
  const trailingCommas = text.length - text.replace(/,+$/, '').length;
  return trailingCommas % 2 === 0;
}

// ---------------------------------------------------------------------------------------------
// Typed option values.

/**
 * Which parser sees an option value, which decides QEMU's error wording:
 * - 'qemuopts': QemuOptsList validation (drivers' runtime options, `-o` of create); values are
 *   strings, and JSON values from `json:` filenames are first turned into strings;
 * - 'keyval': the QAPI visitor over keyval input (`--blockdev a=b`, `--object`), all strings;
 * - 'qapi': the QAPI visitor over typed JSON input (`--blockdev {...}`, QMP).
 */
export type OptionSyntax = 'qemuopts' | 'keyval' | 'qapi';
/** The syntaxes whose values are text. */
type TextOptionSyntax = Exclude<OptionSyntax, 'qapi'>;

const SIZE_HINT = [
  'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-',
  'and exabytes, respectively.',
];

function invalid(message: string, hints: string[] = []): BlkioError {
  return new BlkioError('EINVAL', message, hints);
}

function wrongType(name: string, expected: string): BlkioError {
  return invalid(`Invalid parameter type for '${name}', expected: ${expected}`);
}

/**
 * The string QemuOpts sees for a JSON value (qemu_opts_absorb_qdict): booleans become on/off,
 * integers print in decimal and other numbers as `%.17g`. Null, empty objects and lists give
 * undefined: QemuOpts skips such entries.
 */
export function qemuOptsValue(value: FlatValue): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'boolean') return value ? 'on' : 'off';
  if (typeof value === 'number') return Number.isSafeInteger(value) ? String(value) : formatGeneral(value, 17);
  if (typeof value === 'bigint') return String(value);
  return undefined;
}

/** The words qapi_bool_parse() accepts. */
const BOOLEAN_WORDS: Record<string, boolean> = {
  on: true, yes: true, true: true, y: true, off: false, no: false, false: false, n: false,
};

/** A boolean option (QemuOpts QEMU_OPT_BOOL, QAPI 'bool'). */
export function parseBool(name: string, value: FlatValue, syntax: OptionSyntax = 'qemuopts'): boolean {
  if (syntax === 'qapi') {
    if (typeof value !== 'boolean') throw wrongType(name, 'boolean');
    return value;
  }
  const text = qemuOptsValue(value) ?? '';
  if (!Object.hasOwn(BOOLEAN_WORDS, text)) throw invalid(`Parameter '${name}' expects 'on' or 'off'`);
  return BOOLEAN_WORDS[text];
}

/** A string option (QAPI 'str'); QemuOpts and keyval values are strings already. */
export function parseString(name: string, value: FlatValue, syntax: OptionSyntax = 'qemuopts'): string {
  if (syntax === 'qapi' && typeof value !== 'string') throw wrongType(name, 'string');
  return qemuOptsValue(value) ?? '';
}

/**
 * C strtoull/strtoll with base 0 over the whole string (qemu_strtou64 / qemu_strtoi64 without
 * an end pointer): 'invalid' for no digits or trailing text, 'range' for overflow. A negative
 * sign wraps modulo 2^64 in the unsigned flavour, as strtoull does.
 */
export function parseCInteger(text: string, signed: boolean): bigint | 'invalid' | 'range' {
  const scanned = scanUnsigned(text, 0);
  if (!scanned || scanned.end !== text.length) return 'invalid';
  const { value, negative, overflow } = scanned;
  if (signed) {
    const limit = negative ? 1n << 63n : (1n << 63n) - 1n;
    if (overflow || value > limit) return 'range';
    return negative ? -value : value;
  }
  if (overflow) return 'range';
  return negative ? BigInt.asUintN(64, -value) : value;
}

/**
 * An unsigned 64-bit number option (QemuOpts QEMU_OPT_NUMBER, QAPI 'uint64'): decimal, `0x`
 * hex or `0` octal, a negative value wrapping around as in C. Values above 2^53 come back as
 * the nearest double; only range checks make sense for them anyway. C callers that read the
 * option as int64 (negative = invalid) must treat values >= 2^63 as negative.
 */
export function parseNumber(name: string, value: FlatValue, syntax: OptionSyntax = 'qemuopts'): number {
  if (syntax === 'qapi') {
    // QAPI also takes a negative integer "for backward compatibility", wrapping it to uint64.
    if (typeof value === 'bigint') return Number(BigInt.asUintN(64, value)); // a JSON integer is within int64 or uint64
    if (typeof value !== 'number' || !Number.isInteger(value) || value < -(2 ** 63) || value >= 2 ** 64) {
      throw invalid(`Parameter '${name}' expects uint64`);
    }
    return value < 0 ? Number(BigInt.asUintN(64, BigInt(value))) : value;
  }
  return Number(parseNumberExact(name, qemuOptsValue(value) ?? '', syntax));
}

/** A number option's text (QemuOpts or keyval), as its exact uint64 value. */
export function parseNumberExact(name: string, text: string, syntax: TextOptionSyntax = 'qemuopts'): bigint {
  const result = parseCInteger(text, false);
  if (syntax === 'keyval') {
    if (typeof result !== 'bigint') throw invalid(`Parameter '${name}' expects integer`);
  } else if (result === 'range') {
    throw invalid(`Value '${text}' is too large for parameter '${name}'`);
  } else if (result === 'invalid') {
    throw invalid(`Parameter '${name}' expects a number`);
  }
  return result;
}

/** A signed 64-bit integer option (QAPI 'int'); QemuOpts has no signed type. */
export function parseInteger(name: string, value: FlatValue, syntax: 'keyval' | 'qapi' = 'keyval'): number {
  if (syntax === 'qapi') {
    if (typeof value === 'bigint' && value < 2n ** 63n) return Number(value);
    if (typeof value !== 'number' || !Number.isInteger(value) || value < -(2 ** 63) || value >= 2 ** 63) {
      throw wrongType(name, 'integer');
    }
    return value;
  }
  const result = parseCInteger(typeof value === 'string' ? value : '', true);
  if (typeof result !== 'bigint') throw invalid(`Parameter '${name}' expects integer`);
  return Number(result);
}

/**
 * A size option (QemuOpts QEMU_OPT_SIZE, QAPI 'size'): qemu_strtosz with suffixes; values above
 * 2^53 come back as the nearest double (see parseNumber).
 */
export function parseSizeOption(
  name: string, value: FlatValue, syntax: OptionSyntax = 'qemuopts', warn?: WarningSink,
): number {
  if (syntax === 'qapi') return parseNumber(name, value, 'qapi');
  return Number(parseSizeOptionExact(name, qemuOptsValue(value) ?? '', syntax, warn));
}

/** A size option's text (QemuOpts or keyval), as its exact uint64 value. */
export function parseSizeOptionExact(
  name: string, text: string, syntax: TextOptionSyntax = 'qemuopts', warn?: WarningSink,
): bigint {
  try {
    return parseSizeBigInt(text, 'B', warn);
  } catch (error) {
    if (!(error instanceof SizeError)) throw error;
    if (syntax === 'keyval') throw invalid(`Parameter '${name}' expects size`);
    if (error.code === 'ERANGE') throw invalid(`Value '${text}' is out of range for parameter '${name}'`);
    throw invalid(`Parameter '${name}' expects a non-negative number below 2^64`, SIZE_HINT);
  }
}
