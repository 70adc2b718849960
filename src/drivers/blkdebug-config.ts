/**
 * blkdebug's rule sections, from its config file (`[inject-error]` / `[set-state]` groups of
 * `key = "value"` lines) and from the `inject-error.N.*` / `set-state.N.*` options, validated
 * the way QEMU's QemuOpts do it, with its messages. The result is plain typed sections; the
 * driver turns them into rules.
 */
import { BlkioError } from '../errors.js';
import type { FlatOptions, FlatValue } from '../options/types.js';
import { qdictKeyOrder } from '../options/json.js';
import { parseBool, parseNumber, qemuOptsValue } from '../options/qemuopts.js';

export type SectionGroup = 'inject-error' | 'set-state';

type KeyType = 'string' | 'number' | 'bool';

const GROUP_KEYS: Record<SectionGroup, Record<string, KeyType>> = {
  'inject-error': {
    event: 'string', state: 'number', iotype: 'string', errno: 'number', sector: 'number', once: 'bool', immediately: 'bool',
  },
  'set-state': { event: 'string', state: 'number', new_state: 'number' },
};

export type SectionValue = string | number | boolean;

export interface Section {
  group: SectionGroup;
  values: Map<string, SectionValue>;
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

function isGroup(name: string): name is SectionGroup {
  return Object.hasOwn(GROUP_KEYS, name);
}

function typedValue(key: string, type: KeyType, text: string): SectionValue {
  if (type === 'number') return parseNumber(key, text);
  if (type === 'bool') return parseBool(key, text);
  return text;
}

// ---------------------------------------------------------------------------------------------
// The config file

/** A whitespace-delimited token at `pos` (after skipping whitespace), as scanf's `%s` reads it. */
function scanToken(line: string, pos: number): { token: string; end: number } | undefined {
  const m = /^\s*(\S+)/.exec(line.slice(pos));
  return m ? { token: m[1], end: pos + m[0].length } : undefined;
}

/**
 * A `[group]` or `[group "id"]` header; undefined when the line matches neither form (QEMU
 * then ignores it). The group name runs to the first `]`, newline included.
 */
function parseHeader(line: string): string | undefined {
  const token = /^\[(\S+)/.exec(line);
  if (token && /^\s*"[^"]/.test(line.slice(token[0].length))) return token[1];
  return /^\[([^\]]+)/.exec(line)?.[1];
}

/**
 * A `key = "value"` line. As with QEMU's scanf patterns, the key is the first token; the
 * value is what stands between the quotes after `=` (up to the end of the text when the
 * closing quote is missing), and empty when the line has no quoted value at all.
 */
function parseAssignment(line: string): [string, string] | undefined {
  const key = scanToken(line, 0);
  if (!key) return undefined;
  const m = /^\s*=\s*"([^"]+)/.exec(line.slice(key.end));
  return [key.token, m ? m[1] : ''];
}

/** Parse the config file text into sections, checking each when it ends. */
export function parseConfigFile(text: string): Section[] {
  const sections: Section[] = [];
  let open: { name: string; entries: Array<[string, string]> } | undefined;
  const close = (): void => {
    if (!open) return;
    if (!isGroup(open.name)) throw invalid(`There is no option group '${open.name}'`);
    const values = new Map<string, SectionValue>();
    for (const [key, value] of open.entries) {
      const type = GROUP_KEYS[open.name][key];
      if (type === undefined) throw invalid(`Invalid parameter '${key}'`);
      values.set(key, typedValue(key, type, value));
    }
    sections.push({ group: open.name, values });
  };
  // Lines keep their newline: an unterminated header or value includes it, as in QEMU.
  for (const line of text.match(/[^\n]*\n|[^\n]+$/g) ?? []) {
    if (line === '\n' || line.startsWith('#')) continue;
    if (line.startsWith('[')) {
      const name = parseHeader(line);
      if (name !== undefined) {
        close();
        open = { name, entries: [] };
      }
      continue;
    }
    if (!open) throw invalid('no group defined');
    const assignment = parseAssignment(line);
    if (!assignment) throw invalid('parse error');
    open.entries.push(assignment);
  }
  close();
  return sections;
}

// ---------------------------------------------------------------------------------------------
// Inline options

/**
 * Take the known keys of `group` out of `options`, typed; the rest stays behind. As QemuOpts
 * does, a known key whose value is null or an empty object or list is taken and ignored.
 */
function absorb(group: SectionGroup, options: FlatOptions): Map<string, SectionValue> {
  const values = new Map<string, SectionValue>();
  // QemuOpts validates in QDict order, so that order decides which bad value is reported.
  for (const key of qdictKeyOrder(Object.keys(options))) {
    const type = Object.hasOwn(GROUP_KEYS[group], key) ? GROUP_KEYS[group][key] : undefined;
    if (type === undefined || options[key] === undefined) continue;
    const text = qemuOptsValue(options[key]);
    delete options[key];
    if (text !== undefined) values.set(key, typedValue(key, type, text));
  }
  return values;
}

/** Options `N.*` (or a scalar `N`) of the list element N, removed from `options`. */
function takeElement(options: FlatOptions, index: number): FlatOptions | FlatValue | undefined {
  const key = String(index);
  if (key in options) {
    const scalar = options[key];
    delete options[key];
    return scalar;
  }
  const element: FlatOptions = {};
  let found = false;
  for (const k of Object.keys(options)) {
    if (!k.startsWith(`${key}.`)) continue;
    element[k.slice(key.length + 1)] = options[k];
    delete options[k];
    found = true;
  }
  return found ? element : undefined;
}

/**
 * Sections given as options (`inject-error.event=...` for one, `inject-error.0.event=...` for
 * a list), the way QEMU reads config groups from a block node's options.
 */
export function sectionsFromOptions(group: SectionGroup, options: FlatOptions): Section[] {
  const rest = { ...options };
  const total = Object.keys(rest).length;
  if (total === 0) return [];
  const single = absorb(group, rest);
  const left = qdictKeyOrder(Object.keys(rest));
  if (left.length === 0) return [{ group, values: single }];
  if (left.length < total) throw invalid(`Unknown option '${left[0]}' for [${group}]`);

  const sections: Section[] = [];
  for (let index = 0; ; index++) {
    const element = takeElement(rest, index);
    if (element === undefined) break;
    if (typeof element !== 'object' || element === null || Array.isArray(element)) {
      throw invalid(`[${group}] section (index ${index}) does not consist of keys`);
    }
    const values = absorb(group, element);
    const unsupported = qdictKeyOrder(Object.keys(element))[0];
    if (unsupported !== undefined) throw invalid(`[${group}] section doesn't support the option '${unsupported}'`);
    sections.push({ group, values });
  }
  const unused = qdictKeyOrder(Object.keys(rest))[0];
  if (unused !== undefined) throw invalid(`Unused option '${unused}' for [${group}]`);
  return sections;
}
