/**
 * The VMDK text descriptor: the fields QEMU looks up in it (createType, CID, parentCID), its
 * extent lines read the way QEMU's sscanf pattern reads them, and the CID rewrite of the first
 * write after an open.
 */
import { BlkioError } from '../../errors.js';

/** Bytes of an embedded descriptor that QEMU reads and rewrites. */
export const DESC_SIZE = 20 * 512;

/** createType values a separate descriptor file may name. */
const DESCRIPTOR_TYPES = ['monolithicFlat', 'vmfs', 'vmfsSparse', 'seSparse', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat'];

/** Extent types with data; the other lines are skipped. */
export const EXTENT_TYPES = ['FLAT', 'SPARSE', 'VMFS', 'VMFSSPARSE', 'SESPARSE'];

export interface ExtentLine {
  sectors: number;
  type: string;
  filename: string;
  /** Sector of a flat extent's data in its file. */
  flatOffset: number;
}

/** The directory part of a file name, with its slash ('' for none): where relative extent names start. */
export function dirname(filename: string): string {
  return filename.slice(0, filename.lastIndexOf('/') + 1);
}

/** The text up to its first NUL, one char per byte. */
export function descriptorText(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return Buffer.from(bytes.subarray(0, end < 0 ? bytes.length : end)).toString('latin1');
}

/** `name="value"`: the value after the first occurrence of `name` (the two characters after it skipped). */
function quotedValue(desc: string, name: string): string | undefined {
  const at = desc.indexOf(name);
  if (at < 0) return undefined;
  const start = at + name.length + 2;
  if (start >= desc.length) return undefined;
  const end = desc.indexOf('"', start);
  return end < 0 ? undefined : desc.slice(start, end);
}

/** The backing file a descriptor names; QEMU refuses a value without its closing quote or over 4 KiB. */
export function parentFileNameHint(desc: string): string | undefined {
  const value = quotedValue(desc, 'parentFileNameHint');
  if (value === undefined) {
    if (desc.includes('parentFileNameHint')) throw new BlkioError('EINVAL');
    return undefined;
  }
  if (value.length > 4095) throw new BlkioError('EINVAL');
  return value;
}

/** The createType of a descriptor file, refused as QEMU refuses it. */
export function descriptorCreateType(desc: string): string {
  const type = quotedValue(desc, 'createType');
  if (type === undefined || type.length > 127) throw new BlkioError('EINVAL', 'invalid VMDK image descriptor');
  if (!DESCRIPTOR_TYPES.includes(type)) throw new BlkioError('ENOTSUP', `Unsupported image type '${type}'`);
  return type;
}

/** The hex number after the first `name=` (`CID` also matches inside `parentCID`, as in QEMU). */
export function descriptorCid(desc: string, name: 'CID' | 'parentCID'): number | undefined {
  const at = desc.indexOf(name);
  if (at < 0) return undefined;
  const m = /^\s*(?:0[xX])?([0-9a-fA-F]+)/.exec(desc.slice(at + name.length + 1));
  if (!m) return undefined;
  // sscanf %x keeps the low 32 bits of a longer number.
  return Number(BigInt(`0x${m[1]}`) & 0xffffffffn);
}

/** The descriptor with a new CID: the text from `parentCID` on follows the CID line. */
export function withCid(desc: Uint8Array, cid: number): Uint8Array | undefined {
  const text = descriptorText(desc.subarray(0, DESC_SIZE - 1));
  const parentAt = text.indexOf('parentCID');
  if (parentAt < 0) return undefined;
  const cidAt = text.indexOf('CID');
  const out = new Uint8Array(DESC_SIZE);
  const rewritten = `${text.slice(0, cidAt + 4)}${cid.toString(16)}\n${text.slice(parentAt)}`;
  out.set(Buffer.from(rewritten.slice(0, DESC_SIZE - 1), 'latin1'));
  return out;
}

/** A cursor over one line, reading as sscanf's conversions do (each skips leading white space). */
class Scanner {
  constructor(private readonly s: string, private at = 0) {}

  private skipSpace(): void {
    while (this.at < this.s.length && /\s/.test(this.s[this.at]!)) this.at++;
  }

  /** `%10s`. */
  word(max: number): string | undefined {
    this.skipSpace();
    const start = this.at;
    while (this.at < this.s.length && this.at - start < max && !/\s/.test(this.s[this.at]!)) this.at++;
    return this.at > start ? this.s.slice(start, this.at) : undefined;
  }

  /** `%ld` (as a number; the huge values sscanf would clamp are of no use anyway). */
  integer(): number | undefined {
    this.skipSpace();
    const m = /^[+-]?\d+/.exec(this.s.slice(this.at));
    if (!m) return undefined;
    this.at += m[0].length;
    return Number(m[0]);
  }

  /** ` "%511[^\n\r"]"`: a quoted name; undefined unless both quotes are there. */
  quoted(max: number): string | undefined {
    this.skipSpace();
    if (this.s[this.at] !== '"') return undefined;
    const start = ++this.at;
    while (this.at < this.s.length && this.at - start < max && !'\n\r"'.includes(this.s[this.at]!)) this.at++;
    if (this.at === start) return undefined;
    const name = this.s.slice(start, this.at);
    if (this.s[this.at] !== '"') return undefined;
    this.at++;
    return name;
  }
}

/** The extent lines of a descriptor, in order; throws QEMU's text for a malformed one. */
export function parseExtentLines(desc: string): ExtentLine[] {
  const extents: ExtentLine[] = [];
  let at = 0;
  while (at < desc.length) {
    const nl = desc.indexOf('\n', at);
    const next = nl < 0 ? desc.length : nl + 1;
    const line = desc.slice(at, next);
    at = next;
    const scan = new Scanner(line);
    const access = scan.word(10);
    const sectors = access === undefined ? undefined : scan.integer();
    const type = sectors === undefined ? undefined : scan.word(10);
    const filename = type === undefined ? undefined : scan.quoted(511);
    if (access !== 'RW' || filename === undefined) continue;
    const offset = scan.integer();
    const invalid = (): BlkioError => new BlkioError('EINVAL', `Invalid extent line: ${line.endsWith('\n') ? line.slice(0, -1) : line}`);
    let flatOffset = 0;
    if (type === 'FLAT') {
      if (offset === undefined || offset < 0) throw invalid();
      flatOffset = offset;
    } else if (offset !== undefined) {
      throw invalid();
    }
    if (sectors! <= 0 || !EXTENT_TYPES.includes(type!)) continue;
    extents.push({ sectors: sectors!, type: type!, filename, flatOffset });
  }
  return extents;
}
