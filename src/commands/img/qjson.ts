/**
 * JSON the way qemu-img prints QAPI results (`info`, `check` with --output=json): objects are
 * QEMU QDicts, whose members come out in hash-bucket order (not insertion order), pretty-printed
 * with a 4-space indent; strings escape control and non-ASCII characters as `\uXXXX`.
 */
import { qdictKeyOrder } from '../../options/json.js';

function quote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    switch (ch) {
      case '"': out += '\\"'; break;
      case '\\': out += '\\\\'; break;
      case '\b': out += '\\b'; break;
      case '\f': out += '\\f'; break;
      case '\n': out += '\\n'; break;
      case '\r': out += '\\r'; break;
      case '\t': out += '\\t'; break;
      default:
        if (cp > 0xffff) {
          const hi = 0xd800 + ((cp - 0x10000) >> 10);
          const lo = 0xdc00 + ((cp - 0x10000) & 0x3ff);
          out += `\\u${hex4(hi)}\\u${hex4(lo)}`;
        } else if (cp < 0x20 || cp >= 0x7f) {
          out += `\\u${hex4(cp)}`;
        } else {
          out += ch;
        }
    }
  }
  return out + '"';
}

function hex4(n: number): string {
  return n.toString(16).toUpperCase().padStart(4, '0');
}

/** Pretty-print `value` (objects, arrays, strings, integers, booleans, null) as QEMU does. */
export function toQemuJson(value: unknown, level = 0): string {
  const pad = (n: number): string => '\n' + ' '.repeat(4 * n);
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'string') return quote(value);
  // An integer beyond 2^53 in full digits, as C prints it (String would give 9223372035781034000).
  if (typeof value === 'number' && Number.isInteger(value) && !Number.isSafeInteger(value)) return String(BigInt(value));
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) {
    const items = value.map((v) => pad(level + 1) + toQemuJson(v, level + 1));
    return `[${items.join(',')}${pad(level)}]`;
  }
  const obj = value as Record<string, unknown>;
  const keys = qdictKeyOrder(Object.keys(obj).filter((k) => obj[k] !== undefined));
  const members = keys.map((k) => `${pad(level + 1)}${quote(k)}: ${toQemuJson(obj[k], level + 1)}`);
  return `{${members.join(',')}${pad(level)}}`;
}

/**
 * QEMU's human dump of a QAPI object (`Format specific information:`): `key: value` lines with
 * dashes in keys shown as spaces, list items as `[i]:`, nested objects and lists on the lines
 * below, 4 more spaces in.
 */
export function dumpQObjectLines(value: Record<string, unknown> | unknown[], level: number): string[] {
  const lines: string[] = [];
  const entries: Array<[string, unknown]> = Array.isArray(value)
    ? value.map((v, i) => [`[${i}]`, v])
    : qdictKeyOrder(Object.keys(value).filter((k) => value[k] !== undefined)).map((k) => [k.replaceAll('-', ' '), value[k]]);
  const pad = ' '.repeat(4 * level);
  for (const [label, member] of entries) {
    if (typeof member === 'object' && member !== null) {
      lines.push(`${pad}${label}:`, ...dumpQObjectLines(member as Record<string, unknown> | unknown[], level + 1));
    } else {
      lines.push(`${pad}${label}: ${String(member)}`);
    }
  }
  return lines;
}
