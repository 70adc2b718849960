/**
 * Encrypted qcow2 images at open: the `encrypt.*` runtime options checked against the header's
 * method, the legacy AES key or the LUKS header (crypto header extension) unlocked with the
 * key secret. Opened without I/O (qemu-img info), no secret is needed: LUKS only parses.
 */
import { BlkioError } from '../../errors.js';
import type { BdrvChild } from '../../block/child.js';
import type { FlatOptions } from '../../options/types.js';
import { secretData } from '../../block/secret.js';
import { legacyAesEncryption, SectorCipher, type Qcow2Encryption } from './crypto.js';
import { CRYPT_AES, CRYPT_LUKS } from './header.js';
import { luksCipherSpec, luksInfo, parseLuksHeader, unlockLuks } from './luks.js';

const FORMAT_NAMES: Record<number, string> = { [CRYPT_AES]: 'aes', [CRYPT_LUKS]: 'luks' };

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** Check the `encrypt.*` options (prefix taken off) against the header's crypt_method, in QEMU's order. */
export function checkEncryptOptions(cryptMethod: number, options: FlatOptions): void {
  if (cryptMethod > 2) throw invalid(`Unsupported encryption method ${cryptMethod | 0}`);
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

function keySecret(o: EncryptionOpen): Uint8Array {
  const id = o.options['key-secret'];
  if (id === undefined) throw invalid("Parameter 'encrypt.key-secret' is required for cipher");
  return secretData(o.lookupObject, String(id));
}

/** Open the image's encryption; `encryption` is absent when opened without I/O. */
export async function openEncryption(file: BdrvChild, o: EncryptionOpen): Promise<{ encryption?: Qcow2Encryption; info: Record<string, unknown> }> {
  if (o.cryptMethod === CRYPT_AES) {
    return { encryption: o.withoutIo ? undefined : legacyAesEncryption(keySecret(o)), info: { format: 'aes' } };
  }
  if (!o.cryptoExtension) throw invalid('No LUKS encryption header found');
  const view = new DataView(o.cryptoExtension.buffer, o.cryptoExtension.byteOffset, o.cryptoExtension.length);
  const offset = Number(view.getBigUint64(0));
  const length = Number(view.getBigUint64(8));
  const readAt = async (at: number, bytes: number): Promise<Uint8Array> => {
    if (at + bytes > length) throw invalid('LUKS key material beyond the crypto header');
    const buf = new Uint8Array(bytes);
    await file.read(offset + at, bytes, buf);
    return buf;
  };
  const header = parseLuksHeader(await readAt(0, Math.min(length, 592)));
  const info = luksInfo(header);
  if (o.withoutIo) return { info };
  const password = keySecret(o);
  const masterKey = await unlockLuks(header, password, readAt);
  return { encryption: { cipher: new SectorCipher(luksCipherSpec(header), masterKey), byHostOffset: true }, info };
}
