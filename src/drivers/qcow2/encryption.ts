/**
 * Encrypted qcow2 images at open: the `encrypt.*` runtime options checked against the header's
 * method, the legacy AES key or the LUKS header (crypto header extension) unlocked with the
 * key secret. Opened without I/O (qemu-img info), no secret is needed: LUKS only parses.
 * New images: the `encrypt.*` create options and the header fields they lead to.
 */
import { BlkioError } from '../../errors.js';
import type { BdrvChild } from '../../block/child.js';
import type { FlatOptions } from '../../options/types.js';
import { qemuOptsValue } from '../../options/qemuopts.js';
import { secretData } from '../../block/secret.js';
import { SectorCipher } from '../../crypto/sector-cipher.js';
import { legacyAesEncryption, type Qcow2Encryption } from './crypto.js';
import { CRYPT_AES, CRYPT_LUKS } from './header.js';
import {
  amendLuks, createLuks, enumCreateOption, LUKS_HEADER_BYTES, luksAmendment, luksCipherSpec, luksCreateOptions, luksInfo,
  parseLuksHeader, unlockLuks, type LuksCreateOptions,
} from '../../crypto/luks.js';
import type { Qcow2State } from './state.js';

const FORMAT_NAMES: Record<number, string> = { [CRYPT_AES]: 'aes', [CRYPT_LUKS]: 'luks' };

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** Check the `encrypt.*` options (prefix taken off) against the header's crypt_method, in QEMU's order. */
export function checkEncryptOptions(cryptMethod: number, options: FlatOptions): void {
  if (cryptMethod > CRYPT_LUKS) throw invalid(`Unsupported encryption method ${cryptMethod | 0}`);
  const format = options.format;
  const headerFormat = FORMAT_NAMES[cryptMethod];
  if (!headerFormat) {
    if (format !== undefined) throw invalid(`No encryption in image header, but options specified format '${String(format)}'`);
    return;
  }
  if (format !== undefined && format !== headerFormat) {
    throw invalid(`Header reported '${headerFormat}' encryption format but options specify '${String(format)}'`);
  }
  for (const key of Object.keys(options)) {
    if (key !== 'format' && key !== 'key-secret') throw invalid(`Parameter '${key}' is unexpected`);
  }
}

export interface EncryptionOpen {
  cryptMethod: number;
  options: FlatOptions;
  /** The crypto header extension's data, if the image has one. */
  cryptoExtension?: Uint8Array;
  /** qemu-img info: describe, do not unlock. */
  withoutIo: boolean;
  lookupObject: (id: string) => unknown;
}

/** Where the crypto header extension says the LUKS header and key material are. */
export function cryptoHeaderLocation(extension: Uint8Array): { offset: number; length: number } {
  const view = new DataView(extension.buffer, extension.byteOffset, extension.length);
  return { offset: Number(view.getBigUint64(0)), length: Number(view.getBigUint64(8)) };
}

function keySecret(o: EncryptionOpen): Uint8Array {
  const id = o.options['key-secret'];
  if (id === undefined) throw invalid("Parameter 'encrypt.key-secret' is required for cipher");
  // A JSON boolean names the secret 'on' or 'off', as QEMU's options read it.
  return secretData(o.lookupObject, qemuOptsValue(id) ?? String(id));
}

/** Open the image's encryption; `encryption` is absent when opened without I/O. */
export async function openEncryption(file: BdrvChild, o: EncryptionOpen): Promise<{ encryption?: Qcow2Encryption; info: Record<string, unknown> }> {
  if (o.cryptMethod === CRYPT_AES) {
    return { encryption: o.withoutIo ? undefined : legacyAesEncryption(keySecret(o)), info: { format: 'aes' } };
  }
  if (!o.cryptoExtension) throw invalid(`Missing CRYPTO header for crypt method ${CRYPT_LUKS}`);
  const io = cryptoHeaderIo(file, o.cryptoExtension);
  const header = parseLuksHeader(await io.readAt(0, LUKS_HEADER_BYTES));
  const cipherSpec = luksCipherSpec(header);
  const info = luksInfo(header, cipherSpec);
  if (o.withoutIo) return { info };
  const password = keySecret(o);
  const masterKey = await unlockLuks(header, cipherSpec, password, io.readAt);
  return {
    encryption: { cipher: new SectorCipher(cipherSpec, masterKey), byHostOffset: true, luks: { header, masterKey } },
    info,
  };
}

/** Reads and writes inside the LUKS area the crypto header extension points at, offsets from its start. */
function cryptoHeaderIo(file: BdrvChild, extension: Uint8Array): {
  readAt: (at: number, bytes: number) => Promise<Uint8Array>;
  writeAt: (at: number, data: Uint8Array) => Promise<void>;
} {
  const { offset, length } = cryptoHeaderLocation(extension);
  const check = (at: number, bytes: number): void => {
    if (at + bytes > length) throw invalid('Request for data outside of extension header');
  };
  return {
    async readAt(at, bytes) {
      check(at, bytes);
      const buf = new Uint8Array(bytes);
      await file.read(offset + at, bytes, buf);
      return buf;
    },
    async writeAt(at, data) {
      check(at, data.length);
      await file.write(offset + at, data.length, data);
    },
  };
}

/** `qemu-img amend -o encrypt.*`: add or erase LUKS key slots of an image opened with its key. */
export async function amendEncryption(
  s: Qcow2State, options: Record<string, unknown>, force: boolean, lookupObject: (id: string) => unknown,
): Promise<void> {
  if (!s.header.cryptMethod) throw invalid("Can't amend encryption options - encryption not present");
  if (s.header.cryptMethod !== CRYPT_LUKS) throw invalid('Only LUKS encryption options can be amended');
  const amendment = luksAmendment(options, 'encrypt.', (id) => secretData(lookupObject, id));
  const { cipher: { spec: cipherSpec }, luks } = s.encryption!;
  const { header, masterKey } = luks!;
  const io = cryptoHeaderIo(s.file, s.cryptoExtension!);
  await amendLuks(header, cipherSpec, masterKey, amendment, force, io.readAt, io.writeAt);
  s.encryptionInfo = luksInfo(header, cipherSpec);
}

/**
 * What `qemu-img create -o encrypt.*` asked for, validated as QEMU's QAPI conversion does; a
 * missing key secret is refused only where the encryption is set up (`encryptionKeySecret`).
 */
export type EncryptionCreate =
  | { format: 'aes'; keySecret?: string }
  | { format: 'luks'; keySecret?: string; luks: LuksCreateOptions };

/** The encryption of a new image, or undefined for none (`encryption=on` is the old name of aes). */
export function encryptionCreateSettings(options: Record<string, unknown>): EncryptionCreate | undefined {
  const names = Object.keys(options).filter((name) => name.startsWith('encrypt.'));
  if (options.encryption !== true && !names.length) return undefined;
  // encrypt.* options make QAPI's encrypt union, which has no default format.
  if (options.encryption !== true && options['encrypt.format'] === undefined) throw invalid("Parameter 'encrypt.format' is missing");
  const format = options.encryption === true && options['encrypt.format'] === undefined
    ? 'aes'
    : enumCreateOption(options, 'encrypt.', 'format', ['aes', 'luks'] as const, 'aes');
  const keySecret = options['encrypt.key-secret'];
  if (format === 'aes') {
    const unexpected = names.find((name) => name !== 'encrypt.format' && name !== 'encrypt.key-secret');
    if (unexpected) throw invalid(`Parameter '${unexpected}' is unexpected`);
  }
  const luks: LuksCreateOptions = luksCreateOptions(options, 'encrypt.');
  const secret = keySecret === undefined ? {} : { keySecret: String(keySecret) };
  return format === 'aes' ? { format, ...secret } : { format, ...secret, luks };
}

/** The secret's id; QEMU's crypto layer asks for it only when it makes the header (after the image is sized). */
export function encryptionKeySecret(e: EncryptionCreate): string {
  if (e.keySecret === undefined) throw invalid("Parameter 'encrypt.key-secret' is required for cipher");
  return e.keySecret;
}

/**
 * The header fields of a new image's encryption: crypt_method and, for LUKS, the key area to
 * place in the image (`place` allocates room for it and returns where it went).
 */
export async function setUpEncryption(
  e: EncryptionCreate, lookupObject: (id: string) => unknown, place: (area: Uint8Array) => Promise<number>,
): Promise<{ cryptMethod: number; cryptoExtension?: Uint8Array }> {
  const password = secretData(lookupObject, encryptionKeySecret(e));
  if (e.format === 'aes') return { cryptMethod: CRYPT_AES };
  const { area } = await createLuks(e.luks, password);
  const offset = await place(area);
  const extension = new Uint8Array(16);
  const view = new DataView(extension.buffer);
  view.setBigUint64(0, BigInt(offset));
  view.setBigUint64(8, BigInt(area.length));
  return { cryptMethod: CRYPT_LUKS, cryptoExtension: extension };
}
