/**
 * QEMU's JSON and QDict behaviour: its JSON dialect (single-quoted strings allowed, its own
 * error texts), `json:` pseudo-filenames, flattening nested options to dotted keys and back,
 * and the order in which QEMU walks a QDict (which decides what it reports first and how it
 * writes generated `json:{...}` filenames).
 */

import { BlkioError } from '../errors.js';
import { formatGeneral, scanUnsigned } from './size.js';
import type { FlatOptions, FlatValue, OptionScalar, OptionTree, OptionValue } from './types.js';

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

export function isTree(value: OptionValue | undefined): value is OptionTree {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Sets an own property even for keys such as `__proto__`. */
function setEntry(object: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true });
}

// ---------------------------------------------------------------------------------------------
// QDict iteration order.

const QDICT_BUCKETS = 512;

/** The string hash QDict uses (tdb_hash over the UTF-8 bytes). */
function qdictHash(key: string): number {
  const bytes = new TextEncoder().encode(key);
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  bytes.forEach((byte, i) => {
    value = (value + ((byte << ((i * 5) % 24)) >>> 0)) >>> 0;
  });
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/**
 * The order in which QEMU iterates a QDict holding `keys` (given in insertion order): by hash
 * bucket, and within a bucket the most recently inserted first. QEMU reports the first
 * offending entry in this order (e.g. the unsupported option it names) and writes JSON in it.
 */
export function qdictKeyOrder(keys: readonly string[]): string[] {
  return keys
    .map((key, insertion) => ({ key, insertion, bucket: qdictHash(key) % QDICT_BUCKETS }))
    .sort((a, b) => a.bucket - b.bucket || b.insertion - a.insertion)
    .map((entry) => entry.key);
}

/**
 * A copy of a QDict as QEMU makes it (qdict_clone_shallow): entries are inserted in iteration
 * order, so keys sharing a hash bucket come out reversed. The key order of `flat` is taken as
 * its insertion order.
 */
export function qdictCopy(flat: FlatOptions): FlatOptions {
  const copy: FlatOptions = {};
  for (const key of qdictKeyOrder(Object.keys(flat))) setEntry(copy, key, flat[key]);
  return copy;
}

// ---------------------------------------------------------------------------------------------
// Lexer (QEMU's json-lexer): tokens, or the text of a "stray" invalid token.

type TokenKind = '{' | '}' | '[' | ']' | ':' | ',' | 'string' | 'number' | 'keyword';

interface Token {
  kind: TokenKind;
  text: string;
}

const JSON_WHITESPACE = ' \t\r\n';
const MAX_NESTING = 1024;

class JsonLexer {
  private pos = 0;

  constructor(private readonly text: string) {}

  /** True if only JSON white space is left. */
  atEnd(): boolean {
    while (this.pos < this.text.length && JSON_WHITESPACE.includes(this.text[this.pos])) this.pos++;
    return this.pos >= this.text.length;
  }

  /** The next token; an invalid one throws `stray '<text read so far>'`. Call after atEnd(). */
  next(): Token {
    const start = this.pos;
    const ch = this.text[this.pos++];
    if ('{}[]:,'.includes(ch)) return { kind: ch as TokenKind, text: ch };
    if (ch === '"' || ch === "'") return this.string(start, ch);
    if (ch === '-' || isDigit(ch)) return this.number(start, ch);
    if (isLowercase(ch)) {
      while (isLowercase(this.text[this.pos])) this.pos++;
      return { kind: 'keyword', text: this.text.slice(start, this.pos) };
    }
    return this.stray(start);
  }

  /** An invalid token: the offending character is part of the text, the end of input is not. */
  private stray(start: number): never {
    throw invalid(`JSON parse error, stray '${this.text.slice(start, this.pos)}'`);
  }

  /** Consumes the next character if `accept` allows it, else fails the token. */
  private expect(start: number, accept: (ch: string) => boolean): string {
    const ch = this.text[this.pos];
    if (ch === undefined) this.stray(start);
    this.pos++;
    if (!accept(ch)) this.stray(start);
    return ch;
  }

  private string(start: number, quote: string): Token {
    for (;;) {
      const ch = this.expect(start, (c) => c >= ' ');
      if (ch === quote) return { kind: 'string', text: this.text.slice(start, this.pos) };
      if (ch === '\\') this.expect(start, (c) => c >= ' ');
    }
  }

  private number(start: number, first: string): Token {
    const digits = (): void => {
      while (isDigit(this.text[this.pos])) this.pos++;
    };
    const leading = first === '-' ? this.expect(start, isDigit) : first;
    if (leading !== '0') digits();
    else if (isDigit(this.text[this.pos])) this.expect(start, () => false); // no leading zeros
    if (this.text[this.pos] === '.') {
      this.pos++;
      this.expect(start, isDigit);
      digits();
    }
    if (this.text[this.pos] === 'e' || this.text[this.pos] === 'E') {
      this.pos++;
      const signOrDigit = this.expect(start, (c) => isDigit(c) || c === '+' || c === '-');
      if (!isDigit(signOrDigit)) this.expect(start, isDigit);
      digits();
    }
    return { kind: 'number', text: this.text.slice(start, this.pos) };
  }
}

function isDigit(ch: string | undefined): boolean {
  return ch !== undefined && ch >= '0' && ch <= '9';
}

function isLowercase(ch: string | undefined): boolean {
  return ch !== undefined && ch >= 'a' && ch <= 'z';
}

/**
 * QEMU's JSON streamer: the tokens of one top-level value (until brackets balance, or the input
 * ends). Returns undefined if the input holds no more tokens.
 */
function readMessage(lexer: JsonLexer): Token[] | undefined {
  const tokens: Token[] = [];
  let braces = 0;
  let brackets = 0;
  while (!lexer.atEnd()) {
    const token = lexer.next();
    if (token.kind === '{') braces++;
    if (token.kind === '}') braces--;
    if (token.kind === '[') brackets++;
    if (token.kind === ']') brackets--;
    if (braces + brackets > MAX_NESTING) throw invalid('JSON nesting depth limit exceeded');
    tokens.push(token);
    const open = (braces > 0 || brackets > 0) && braces >= 0 && brackets >= 0;
    if (!open) return tokens;
  }
  return tokens.length > 0 ? tokens : undefined;
}

// ---------------------------------------------------------------------------------------------
// Parser (QEMU's json-parser). The innermost error is the one QEMU reports.

class JsonParser {
  private pos = 0;

  constructor(private readonly tokens: Token[]) {}

  private fail(message: string): never {
    throw invalid(`JSON parse error, ${message}`);
  }

  private peek(): Token {
    return this.tokens[this.pos] ?? this.fail('premature EOI');
  }

  private pop(): Token {
    const token = this.peek();
    this.pos++;
    return token;
  }

  value(): OptionValue {
    const token = this.peek();
    switch (token.kind) {
      case '{': return this.object();
      case '[': return this.array();
      case 'string': this.pos++; return parseStringToken(token.text);
      case 'number': this.pos++; return parseNumberToken(token.text);
      case 'keyword': this.pos++; return parseKeyword(token.text);
      default: return this.fail('expecting value');
    }
  }

  private object(): OptionTree {
    this.pop();
    const object: OptionTree = {};
    if (this.peek().kind === '}') {
      this.pos++;
      return object;
    }
    for (;;) {
      const key = this.value();
      if (typeof key !== 'string') this.fail('key is not a string in object');
      if (this.pop().kind !== ':') this.fail('missing : in object pair');
      const value = this.value();
      if (Object.hasOwn(object, key)) this.fail('duplicate key');
      setEntry(object, key, value);
      const separator = this.pop();
      if (separator.kind === '}') return object;
      if (separator.kind !== ',') this.fail('expected separator in dict');
    }
  }

  private array(): OptionValue[] {
    this.pop();
    const array: OptionValue[] = [];
    if (this.peek().kind === ']') {
      this.pos++;
      return array;
    }
    for (;;) {
      array.push(this.value());
      const separator = this.pop();
      if (separator.kind === ']') return array;
      if (separator.kind !== ',') this.fail('expected separator in list');
    }
  }
}

function parseKeyword(word: string): boolean | null {
  if (word === 'true') return true;
  if (word === 'false') return false;
  if (word === 'null') return null;
  throw invalid(`JSON parse error, invalid keyword '${word}'`);
}

function parseNumberToken(text: string): number | bigint {
  if (!/^-?\d+$/.test(text)) return Number(text);
  // Integers go through BigInt so that "-0" is the integer 0, as in QEMU. Those in int64 or
  // uint64 stay exact; larger ones become doubles, as QEMU's parser makes them.
  const value = BigInt(text);
  if (value < -(2n ** 63n) || value >= 2n ** 64n || Number.isSafeInteger(Number(value))) return Number(value);
  return value;
}

/** QEMU accepts every code point except surrogates and noncharacters. */
function isValidCodePoint(codePoint: number): boolean {
  if (codePoint < 0 || codePoint > 0x10ffff) return false;
  if ((codePoint >= 0xfdd0 && codePoint <= 0xfdef) || (codePoint & 0xfffe) === 0xfffe) return false;
  return codePoint < 0xd800 || codePoint > 0xdfff;
}

const SIMPLE_ESCAPES: Record<string, string> = {
  '"': '"', "'": "'", '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t',
};

/** Four hex digits at `pos` as a number, or -1. */
function fourHex(text: string, pos: number): number {
  const digits = text.slice(pos, pos + 4);
  return /^[0-9a-fA-F]{4}$/.test(digits) ? parseInt(digits, 16) : -1;
}

/** The contents of a string token (quotes included), with escapes resolved. */
function parseStringToken(token: string): string {
  let result = '';
  let pos = 1;
  const end = token.length - 1;
  while (pos < end) {
    const codePoint = token.codePointAt(pos)!;
    const ch = String.fromCodePoint(codePoint);
    if (ch !== '\\') {
      if (!isValidCodePoint(codePoint)) throw invalid('JSON parse error, invalid UTF-8 sequence in string');
      result += ch;
      pos += ch.length;
      continue;
    }
    const escape = token[pos + 1];
    if (Object.hasOwn(SIMPLE_ESCAPES, escape)) {
      result += SIMPLE_ESCAPES[escape];
      pos += 2;
      continue;
    }
    if (escape !== 'u') throw invalid('JSON parse error, invalid escape sequence in string');
    let escapeLength = 6;
    let unicode = fourHex(token, pos + 2);
    if (unicode >= 0xd800 && unicode <= 0xdbff && token.startsWith('\\u', pos + 6)) {
      const trailing = fourHex(token, pos + 8);
      if (trailing >= 0xdc00 && trailing <= 0xdfff) {
        unicode = 0x10000 + ((unicode & 0x3ff) << 10) + (trailing & 0x3ff);
        escapeLength = 12;
      } else {
        unicode = -1;
      }
    }
    if (!isValidCodePoint(unicode)) {
      throw invalid(`JSON parse error, ${token.slice(pos, pos + escapeLength)} is not a valid Unicode character`);
    }
    result += String.fromCodePoint(unicode);
    pos += escapeLength;
  }
  return result;
}

/**
 * Parses text in QEMU's JSON dialect (qobject_from_json): exactly one value, error texts as
 * QEMU's (`JSON parse error, premature EOI`, `Expecting a JSON value`, `Expecting at most one
 * JSON value`, ...). Numbers become JavaScript numbers (integers beyond 2^53 within int64 or
 * uint64: bigints), so `1.0` cannot be told from `1`.
 */
export function parseQemuJson(text: string): OptionValue {
  const lexer = new JsonLexer(text);
  const tokens = readMessage(lexer);
  if (!tokens) throw invalid('Expecting a JSON value');
  const parser = new JsonParser(tokens);
  const value = parser.value();
  if (!lexer.atEnd()) throw invalid('Expecting at most one JSON value');
  return value;
}

// ---------------------------------------------------------------------------------------------
// Writer (qobject_to_json, compact form).

function unicodeEscape(codeUnit: number): string {
  return `\\u${codeUnit.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** QEMU's quoting: control characters, DEL and all non-ASCII as `\uXXXX` (surrogate pairs). */
function quoteJsonString(text: string): string {
  let result = '"';
  for (const ch of text) {
    const codePoint = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') result += `\\${ch}`;
    else if ('\b\f\n\r\t'.includes(ch)) result += JSON.stringify(ch).slice(1, -1);
    else if (codePoint < 0x20 || codePoint >= 0x7f) {
      result += ch.split('').map((unit) => unicodeEscape(unit.charCodeAt(0))).join(''); // UTF-16 units
    } else result += ch;
  }
  return `${result}"`;
}

function formatJsonScalar(value: OptionScalar): string {
  if (typeof value === 'string') return quoteJsonString(value);
  if (typeof value === 'number') return Number.isSafeInteger(value) ? String(value) : formatGeneral(value, 17);
  return String(value); // bigints and booleans
}

/** A value as QEMU writes compact JSON: `{"a": 1, "b": [1, 2]}`, members in QDict order. */
export function toQemuJson(value: OptionValue): string {
  if (Array.isArray(value)) return `[${value.map(toQemuJson).join(', ')}]`;
  if (isTree(value)) {
    const members = qdictKeyOrder(Object.keys(value)).map((key) => `${quoteJsonString(key)}: ${toQemuJson(value[key])}`);
    return `{${members.join(', ')}}`;
  }
  return formatJsonScalar(value);
}

/** The `json:{...}` pseudo-filename QEMU generates for a node's options. */
export function toJsonFilename(tree: OptionTree): string {
  return `json:${toQemuJson(tree)}`;
}

// ---------------------------------------------------------------------------------------------
// json: filenames and flattening.

export function isJsonFilename(filename: string): boolean {
  return filename.startsWith('json:');
}

/** The options of a `json:{...}` filename, flattened to dotted keys. */
export function parseJsonFilename(filename: string): FlatOptions {
  let value: OptionValue;
  try {
    value = parseQemuJson(filename.slice('json:'.length));
  } catch (error) {
    throw error instanceof BlkioError ? error.prepend('Could not parse the JSON options: ') : error;
  }
  if (!isTree(value)) throw invalid('Invalid JSON object given');
  return flattenTree(value);
}

/** What a flat QDict holds as a value: scalars, and empty objects and lists (qdict_flatten leaves them). */
function isFlatValue(value: OptionValue): value is FlatValue {
  return Array.isArray(value) ? value.length === 0 : !isTree(value) || Object.keys(value).length === 0;
}

/**
 * Flattens nested options to dotted keys (qdict_flatten): `{"file": {"driver": "file"}}` ->
 * `file.driver`, arrays -> `.0`, `.1`; empty objects and arrays stay values, as in QEMU (so an
 * unknown `"x": {}` is refused like any other option). Like QEMU, which flattens in place, a
 * nested member overrides a dotted key spelled out at the top level (`file.size` vs
 * `file: {size}`); deeper clashes resolve in QDict order.
 */
export function flattenTree(tree: OptionTree, prefix?: string): FlatOptions {
  const flat: FlatOptions = {};
  const join = (key: string): string => (prefix === undefined ? key : `${prefix}.${key}`);
  for (const [key, value] of Object.entries(tree)) {
    if (isFlatValue(value)) setEntry(flat, join(key), value);
  }
  for (const key of qdictKeyOrder(Object.keys(tree))) {
    const value = tree[key];
    if (!isFlatValue(value)) flattenInto(flat, value, join(key));
  }
  return flat;
}

function flattenInto(flat: FlatOptions, container: OptionTree | OptionValue[], prefix: string): void {
  const entries: Array<[string, OptionValue]> = Array.isArray(container)
    ? container.map((value, index) => [String(index), value])
    : qdictKeyOrder(Object.keys(container)).map((key) => [key, container[key]]);
  for (const [key, value] of entries) {
    if (isFlatValue(value)) setEntry(flat, `${prefix}.${key}`, value);
    else flattenInto(flat, value, `${prefix}.${key}`);
  }
}

/** Splits a flat key at its first `.` that is not part of a `..` escape; `..` means `.`. */
function splitFlatKey(key: string): [prefix: string, suffix: string | undefined] {
  let dot = key.indexOf('.');
  while (dot >= 0 && key[dot + 1] === '.') dot = key.indexOf('.', dot + 2);
  if (dot < 0) return [key.replaceAll('..', '.'), undefined];
  return [key.slice(0, dot).replaceAll('..', '.'), key.slice(dot + 1)];
}

/** A list index for qdict_crumple: the whole key is a signed 64-bit decimal. */
function crumpleIndex(key: string): bigint | undefined {
  const scanned = scanUnsigned(key, 10);
  if (!scanned || scanned.end !== key.length) return undefined;
  const limit = scanned.negative ? 1n << 63n : (1n << 63n) - 1n;
  if (scanned.overflow || scanned.value > limit) return undefined;
  return scanned.negative ? -scanned.value : scanned.value;
}

/**
 * Rebuilds nested options from dotted keys (qdict_crumple): objects whose keys are all indices
 * become arrays. The top level stays an object. Errors are QEMU's: `Cannot mix scalar and
 * non-scalar keys`, `Cannot mix list and non-list keys`, `List indices are not contiguous, saw
 * N elements but M largest index`, `Missing list index N`.
 */
export function unflattenOptions(flat: FlatOptions): OptionTree {
  return crumple(flat, false) as OptionTree;
}

function crumple(flat: Record<string, OptionValue>, mayBeList = true): OptionTree | OptionValue[] {
  const twoLevel = new Map<string, OptionValue | Record<string, OptionValue>>();
  const nested = new Set<string>();
  for (const key of Object.keys(flat)) {
    const [prefix, suffix] = splitFlatKey(key);
    if (twoLevel.has(prefix) && (!nested.has(prefix) || suffix === undefined)) {
      throw invalid('Cannot mix scalar and non-scalar keys');
    }
    if (suffix === undefined) {
      twoLevel.set(prefix, flat[key]);
    } else {
      if (!nested.has(prefix)) {
        twoLevel.set(prefix, {});
        nested.add(prefix);
      }
      setEntry(twoLevel.get(prefix) as Record<string, OptionValue>, suffix, flat[key]);
    }
  }
  // Recurse in QDict order, so that of several faulty members QEMU's first is reported.
  const multiLevel = new Map<string, OptionValue>();
  for (const key of qdictKeyOrder([...twoLevel.keys()])) {
    const value = twoLevel.get(key)!;
    multiLevel.set(key, nested.has(key) ? crumple(value as Record<string, OptionValue>) : value as OptionValue);
  }
  const keys = [...twoLevel.keys()]; // the caller's order
  if (!isCrumpledList(keys) || !mayBeList) {
    const tree: OptionTree = {};
    for (const key of keys) setEntry(tree, key, multiLevel.get(key));
    return tree;
  }
  return keys.map((_, index) => {
    const element = multiLevel.get(String(index));
    if (element === undefined) throw invalid(`Missing list index ${index}`);
    return element;
  });
}

/** qdict_is_list: all keys indices (a list) or none; indices must number exactly max + 1. */
function isCrumpledList(keys: string[]): boolean {
  let kind: boolean | undefined;
  let count = 0n;
  let max = -1n;
  for (const key of keys) {
    const index = crumpleIndex(key);
    kind ??= index !== undefined;
    if (kind !== (index !== undefined)) throw invalid('Cannot mix list and non-list keys');
    if (index !== undefined) {
      count++;
      if (index > max) max = index;
    }
  }
  if (count !== max + 1n) {
    throw invalid(`List indices are not contiguous, saw ${count} elements but ${max} largest index`);
  }
  return kind ?? false;
}

/**
 * Moves the options of child `prefix` out of `flat` (qdict_extract_subqdict with `prefix.`):
 * returns them without the prefix and deletes them from `flat`. Like QEMU, which walks `flat`
 * in QDict order, the result's key order is that order.
 */
export function extractPrefix(flat: FlatOptions, prefix: string): FlatOptions {
  const start = `${prefix}.`;
  const extracted: FlatOptions = {};
  for (const key of qdictKeyOrder(Object.keys(flat))) {
    if (!key.startsWith(start)) continue;
    setEntry(extracted, key.slice(start.length), flat[key]);
    delete flat[key];
  }
  return extracted;
}
