/**
 * keyval option strings (`--blockdev`, `--object`): `key=value` items whose dotted keys build
 * a nested object of strings; objects whose members are all indices become arrays.
 */

import { BlkioError } from '../errors.js';
import { isTree, parseQemuJson, qdictKeyOrder } from './json.js';
import { findNameEnd, readOptionValue } from './qemuopts.js';
import type { OptionTree, OptionValue } from './types.js';

/** A parsed level: insertion-ordered like QEMU's QDict, leaves are strings. */
type KeyvalDict = Map<string, KeyvalDict | string>;

/** Fragments must fit QEMU's 128-byte key buffer. */
const MAX_FRAGMENT_LENGTH = 127;

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** Length of the QAPI name at `pos` (`[A-Za-z][A-Za-z0-9_-]*`, optional `__RFQDN_` prefix), or 0. */
function qapiNameLength(text: string, pos: number): number {
  const match = /^(?:__[A-Za-z0-9.-]*_)?[A-Za-z][A-Za-z0-9_-]*/.exec(text.slice(pos));
  return match ? match[0].length : 0;
}

function isIndexKey(key: string): boolean {
  return /^\d+$/.test(key);
}

/** An index key's value as QEMU reads it (strtoul, capped at INT_MAX). */
function indexValue(key: string): number {
  return Math.min(Number(key), 2 ** 31 - 1);
}

function inconsistent(path: string): BlkioError {
  return invalid(`Parameters '${path}.*' used inconsistently`);
}

/** The object level under `fragment`, created if new; `path` is the key up to it, for errors. */
function enterLevel(level: KeyvalDict, fragment: string, path: string): KeyvalDict {
  const old = level.get(fragment);
  if (typeof old === 'string') throw inconsistent(path);
  if (old) return old;
  const created: KeyvalDict = new Map();
  level.set(fragment, created);
  return created;
}

/** Stores a leaf; a later duplicate replaces the value in place. */
function putValue(level: KeyvalDict, fragment: string, value: string, key: string): void {
  if (level.get(fragment) instanceof Map) throw inconsistent(key);
  level.set(fragment, value);
}

/** Length of the key fragment at `pos`: a QAPI name, or (except first) a decimal index. */
function fragmentLength(key: string, pos: number): number {
  if (pos > 0 && /\d/.test(key[pos] ?? '')) return /^\d+/.exec(key.slice(pos))![0].length;
  return qapiNameLength(key, pos);
}

/** Parses one item starting at `start`; returns the position of the next item. */
function parseItem(
  root: KeyvalDict, text: string, start: number, impliedKey: string | undefined, state: { help: boolean },
): number {
  const nameEnd = findNameEnd(text, start);
  const afterComma = (pos: number): number => (text[pos] === ',' ? pos + 1 : pos);
  let key = text.slice(start, nameEnd);
  let impliedValue: string | undefined;
  if (key !== '' && text[nameEnd] !== '=') {
    if (key === 'help' || key === '?') {
      state.help = true;
      return afterComma(nameEnd);
    }
    if (impliedKey !== undefined) {
      impliedValue = key; // no `,,` escape in an implied value
      key = impliedKey;
    }
  }

  // Walk the fragments; the level for a fragment is entered once the next fragment is valid.
  let level = root;
  let fragmentStart = 0;
  let fragment: string | undefined;
  for (;;) {
    const fragmentEnd = fragmentStart + fragmentLength(key, fragmentStart);
    if (fragmentEnd === fragmentStart || (fragmentEnd < key.length && key[fragmentEnd] !== '.')) {
      throw invalid(`Invalid parameter '${key}'`);
    }
    if (fragmentEnd - fragmentStart > MAX_FRAGMENT_LENGTH) {
      const whole = fragmentStart === 0 && fragmentEnd === key.length;
      throw invalid(`Parameter${whole ? '' : ' fragment'} '${key.slice(fragmentStart, fragmentEnd)}' is too long`);
    }
    if (fragment !== undefined) level = enterLevel(level, fragment, key.slice(0, fragmentStart - 1));
    fragment = key.slice(fragmentStart, fragmentEnd);
    if (fragmentEnd === key.length) break;
    fragmentStart = fragmentEnd + 1;
  }

  if (impliedValue !== undefined) {
    putValue(level, fragment, impliedValue, key);
    return afterComma(nameEnd);
  }
  if (text[nameEnd] !== '=') throw invalid(`Expected '=' after parameter '${key}'`);
  const { value, end } = readOptionValue(text, nameEnd + 1);
  putValue(level, fragment, value, key);
  return afterComma(end);
}

/**
 * Turns levels whose members are all indices into arrays (keyval_listify). Levels are visited in
 * QDict order, so the error QEMU reports first is ours too.
 */
function listify(level: KeyvalDict, path: string): OptionTree | OptionValue[] {
  let hasIndex = false;
  let hasMember = false;
  const converted = new Map<string, OptionValue>();
  for (const key of qdictKeyOrder([...level.keys()])) {
    if (isIndexKey(key)) hasIndex = true;
    else hasMember = true;
    const value = level.get(key)!;
    converted.set(key, typeof value === 'string' ? value : listify(value, `${path}${key}.`));
  }
  if (hasIndex && hasMember) throw invalid(`Parameters '${path}*' used inconsistently`);
  if (!hasIndex) {
    const tree: OptionTree = {};
    for (const key of level.keys()) tree[key] = converted.get(key)!;
    return tree;
  }
  // Keys such as "0" and "00" name the same element: the later one in QDict order wins. An
  // index at or beyond the member count means some smaller index is missing.
  const elements: OptionValue[] = [];
  let maxIndex = -1;
  for (const [key, value] of converted) {
    const index = indexValue(key);
    maxIndex = Math.max(maxIndex, index);
    if (index < converted.size) elements[index] = value;
  }
  const length = Math.min(converted.size + 1, maxIndex + 1);
  for (let index = 0; index < length; index++) {
    if (!(index in elements)) throw invalid(`Parameter '${path}${index}' missing`);
  }
  return elements;
}

function parseItems(text: string, impliedKey: string | undefined): { root: KeyvalDict; help: boolean } {
  const root: KeyvalDict = new Map();
  const state = { help: false };
  let pos = 0;
  let implied = impliedKey; // only the first item may use it
  while (pos < text.length) {
    pos = parseItem(root, text, pos, implied, state);
    implied = undefined;
  }
  return { root, help: state.help };
}

export interface KeyvalResult {
  options: OptionTree;
  /** The string asked for help (`help` or `?` as an item). */
  help: boolean;
}

/**
 * Parses a keyval string where help requests are allowed (`--object help`, `--object
 * secret,help`). With `impliedKey` a first item without `=` is that key's value.
 */
export function parseKeyvalWithHelp(text: string, impliedKey?: string): KeyvalResult {
  const { root, help } = parseItems(text, impliedKey);
  return { options: listify(root, '') as OptionTree, help };
}

/** Parses a keyval string where help is not available (`--blockdev`). */
export function parseKeyval(text: string, impliedKey?: string): OptionTree {
  const { root, help } = parseItems(text, impliedKey);
  if (help) throw invalid('Help is not available for this option');
  return listify(root, '') as OptionTree;
}

/** A `--blockdev` argument is JSON when it starts with `{` (typed values), else keyval (strings). */
export function isJsonBlockdevArg(text: string): boolean {
  return text.startsWith('{');
}

/**
 * A `--blockdev` argument: a JSON object (typed values) if it starts with `{`, else keyval with
 * the implied key `driver`.
 */
export function parseBlockdevArg(text: string): OptionTree {
  if (!isJsonBlockdevArg(text)) return parseKeyval(text, 'driver');
  const value = parseQemuJson(text);
  if (!isTree(value)) throw invalid('Invalid JSON object given'); // unreachable: '{' starts an object
  return value;
}
