/** Text fields of binary headers. */

/** A fixed-size text field up to its first NUL (all of it without one), a character a byte. */
export function latin1CString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return Buffer.from(bytes.buffer, bytes.byteOffset, nul < 0 ? bytes.byteLength : nul).toString('latin1');
}

/** What QEMU's JSON parser stores for `\u0000`: the overlong two-byte form, so C strings hold it. */
const JSON_NUL_BYTES = Buffer.from([0xc0, 0x80]);

/**
 * The bytes QEMU holds for a string: its UTF-8, except that U+0000 (which only a JSON `\u0000`
 * puts into a string) is C0 80. Messages, file names and secrets carry these bytes.
 */
export function qemuStringBytes(text: string): Buffer {
  if (!text.includes('\0')) return Buffer.from(text);
  const parts = text.split('\0').map((part) => Buffer.from(part));
  return Buffer.concat(parts.flatMap((part, i) => (i === 0 ? [part] : [JSON_NUL_BYTES, part])));
}

/** A name as a host path: the string itself, or QEMU's bytes where it holds U+0000 (a string path cannot). */
export function hostPath(name: string): string | Buffer {
  return name.includes('\0') ? qemuStringBytes(name) : name;
}

/**
 * A name stored in an image header (a backing file, its format, a data file): up to the first NUL.
 * QEMU keeps these as bytes and hands them to open() and printf as they are; Node's paths and
 * output are UTF-8, so the bytes are decoded as UTF-8 to reach the same file and print the same
 * bytes.
 */
export function cString(data: Uint8Array): string {
  const nul = data.indexOf(0);
  const text = nul < 0 ? data : data.subarray(0, nul);
  return Buffer.from(text.buffer, text.byteOffset, text.byteLength).toString('utf8');
}

/** The bytes a name is stored as (the reverse of cString). */
export function nameBytes(name: string): Uint8Array {
  return Buffer.from(name, 'utf8');
}
