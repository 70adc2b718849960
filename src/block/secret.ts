/**
 * The `secret` object (QEMU's crypto/secret.c): bytes given inline (`data`) or read from a
 * file (`file`), as text or base64 (`format`), optionally AES-256-CBC encrypted with the
 * 32-byte key of another secret (`keyid`, `iv`). Loaded when the object is completed.
 */
import { isUtf8 } from 'node:buffer';
import { readFileSync } from 'node:fs';
import { hostPath, qemuStringBytes } from '../byte-strings.js';
import { BlkioError, toBlkioError } from '../errors.js';
import { lazyBuiltin } from '../lazy-builtin.js';
import type { OptionTree, OptionValue } from '../options/types.js';

/** Loaded on first use: every command imports this module, few decrypt a secret (node:crypto costs milliseconds). */
const crypto = lazyBuiltin<typeof import('node:crypto')>('node:crypto');

export class Secret {
  /** Undefined until the object is completed. */
  data?: Uint8Array;

  constructor(
    readonly id: string,
    private readonly props: SecretProperties,
  ) {}

  /** Load the bytes (user_creatable_complete); `lookup` finds other objects for `keyid`. */
  complete(lookup: (id: string) => unknown): void {
    const { data, file, format, keyid } = this.props;
    let input: Uint8Array;
    if (file !== undefined) {
      if (data !== undefined) throw invalid("'file' and 'data' are mutually exclusive");
      input = readSecretFile(file);
    } else if (data !== undefined) {
      input = qemuStringBytes(data);
    } else {
      throw invalid("Either 'file' or 'data' must be provided");
    }
    if (keyid !== undefined) this.data = this.decrypt(input, secretBytes(lookup, keyid));
    else this.data = format === 'base64' ? decodeBase64(input) : input;
  }

  private decrypt(input: Uint8Array, key: Uint8Array): Uint8Array {
    if (key.length !== KEY_BYTES) throw invalid(`Key should be ${KEY_BYTES} bytes in length`);
    if (this.props.iv === undefined) throw invalid('IV is required to decrypt secret');
    const iv = decodeBase64(qemuStringBytes(this.props.iv));
    if (iv.length !== BLOCK_BYTES) throw invalid(`IV should be ${BLOCK_BYTES} bytes in length not ${iv.length}`);
    const ciphertext = this.props.format === 'base64' ? decodeBase64(input) : input;
    if (ciphertext.length % BLOCK_BYTES) {
      throw invalid(`Length ${ciphertext.length} must be a multiple of block size ${BLOCK_BYTES}`);
    }
    const decipher = crypto().createDecipheriv('aes-256-cbc', key, iv).setAutoPadding(false);
    const plaintext = Buffer.concat([decipher.update(ciphertext), decipher.final()]);
    // The last byte says how many padding bytes to drop (PKCS#7, without checking their values).
    const padding = plaintext[plaintext.length - 1] ?? 0;
    if (padding > BLOCK_BYTES || padding > plaintext.length) {
      throw invalid(`Incorrect number of padding bytes (${padding}) found on decrypted data`);
    }
    return plaintext.subarray(0, plaintext.length - padding);
  }
}

const KEY_BYTES = 32;
const BLOCK_BYTES = 16;

const FORMATS = ['raw', 'base64'] as const;

interface SecretProperties {
  data?: string;
  file?: string;
  format?: (typeof FORMATS)[number];
  keyid?: string;
  iv?: string;
}

/** The properties as `--object secret,help` lists them: name and type. */
export const SECRET_PROPERTIES: ReadonlyArray<readonly [string, string]> = [
  ['data', 'string'], ['file', 'string'], ['format', 'QCryptoSecretFormat'], ['iv', 'string'], ['keyid', 'string'],
];

/** Set the properties as QEMU's property setters do (before the object is added or completed). */
export function secretProperties(props: OptionTree): SecretProperties {
  const result: SecretProperties = {};
  for (const [key, value] of Object.entries(props)) {
    switch (key) {
      case 'data': case 'file': case 'keyid': case 'iv':
        result[key] = stringProperty(key, value);
        break;
      case 'format': {
        const format = stringProperty(key, value);
        if (!(FORMATS as readonly string[]).includes(format)) throw invalid(`Parameter 'format' does not accept value '${format}'`);
        result.format = format as SecretProperties['format'];
        break;
      }
      case 'loaded': throw invalid("Property 'secret.loaded' is not writable");
      default: throw invalid(`Parameter '${key}' is unexpected`);
    }
  }
  return result;
}

export function stringProperty(key: string, value: OptionValue): string {
  if (typeof value !== 'string') throw invalid(`Invalid parameter type for '${key}', expected: string`);
  return value;
}

/** The bytes of the secret `id` (qcrypto_secret_lookup). */
function secretBytes(lookup: (id: string) => unknown, id: string): Uint8Array {
  const obj = lookup(id);
  if (obj === undefined) throw invalid(`No secret with id '${id}'`);
  if (!(obj instanceof Secret)) throw invalid(`Object with id '${id}' is not a secret`);
  if (!obj.data) throw invalid(`Secret with id '${id}' has no data`);
  return obj.data;
}

/**
 * The bytes of the secret `id` as a password (qcrypto_secret_lookup_as_utf8): they must be
 * UTF-8 without NUL (so a JSON `\u0000`, stored as C0 80, is refused).
 */
export function secretData(lookup: (id: string) => unknown, id: string): Uint8Array {
  const data = secretBytes(lookup, id);
  if (data.includes(0) || !isUtf8(data)) throw invalid(`Data from secret ${id} is not valid UTF-8`);
  return data;
}

/** g_file_get_contents with glib's messages: opening and reading fail differently. */
function readSecretFile(file: string): Uint8Array {
  try {
    return readFileSync(hostPath(file));
  } catch (e) {
    const syscall = (e as { syscall?: string }).syscall;
    const reason = toBlkioError(e).strerror;
    // glib shows a name as UTF-8: each byte of a JSON \u0000's C0 80 is invalid, so U+FFFD.
    const shown = file.replaceAll('\0', '\uFFFD\uFFFD');
    const glibMessage = syscall === 'open' ? `Failed to open file “${shown}”: ${reason}` : `Error reading file “${shown}”: ${reason}`;
    throw invalid(`Unable to read ${file}: ${glibMessage}`);
  }
}

const BASE64_CHARS = /^[A-Za-z0-9+/=\n]*$/;

/** qbase64_decode: QEMU refuses characters outside the alphabet; glib decodes the rest leniently. */
function decodeBase64(input: Uint8Array): Uint8Array {
  const text = Buffer.from(input).toString('latin1');
  if (text.includes('\0')) throw invalid('Base64 data contains embedded NUL characters');
  if (!BASE64_CHARS.test(text)) throw invalid('Base64 data contains invalid characters');
  return Buffer.from(text, 'base64');
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}
