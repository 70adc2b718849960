/** Text fields of binary headers. */

/** A fixed-size text field up to its first NUL (all of it without one), a character a byte. */
export function latin1CString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return Buffer.from(bytes.buffer, bytes.byteOffset, nul < 0 ? bytes.byteLength : nul).toString('latin1');
}
