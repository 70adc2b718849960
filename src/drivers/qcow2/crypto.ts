/**
 * Sector encryption for qcow2 data: a block cipher in a mode (ecb, cbc, xts, ctr) with an IV
 * generator (plain, plain64, essiv) applied per 512-byte sector, as QEMU's crypto/block.c,
 * and the hooks the qcow2 read and write paths call. Legacy AES (crypt_method 1) keys the
 * sectors by guest offset; LUKS (crypt_method 2) by host offset.
 */
import { BlkioError } from '../../errors.js';
import { lazyBuiltin } from '../../lazy-builtin.js';
import type { LuksHeader } from './luks.js';

export const crypto = lazyBuiltin<typeof import('node:crypto')>('node:crypto');

export const SECTOR_SIZE = 512;

export const CIPHER_MODES = ['ecb', 'cbc', 'xts', 'ctr'] as const;
export type CipherMode = (typeof CIPHER_MODES)[number];
export const IVGEN_ALGS = ['plain', 'plain64', 'essiv'] as const;
export type IvgenAlg = (typeof IVGEN_ALGS)[number];

/**
 * The cipher algorithms LUKS volumes name, as QEMU names them (`aes-256`), by the key length
 * they take; Node runs only those OpenSSL has (AES, SM4).
 */
const CIPHER_KEY_BYTES: Record<string, number> = {
  'aes-128': 16, 'aes-192': 24, 'aes-256': 32, 'cast5-128': 16, 'serpent-128': 16, 'serpent-192': 24, 'serpent-256': 32,
  'twofish-128': 16, 'twofish-192': 24, 'twofish-256': 32, 'sm4': 16,
};
const BLOCK_BYTES = 16;

export function cipherKeyBytes(alg: string): number | undefined {
  return CIPHER_KEY_BYTES[alg];
}

/** The OpenSSL name of `alg` in `mode` (xts takes a double-length key); undefined if Node lacks it. */
function opensslCipher(alg: string, mode: CipherMode): string | undefined {
  const name = alg === 'sm4' ? `sm4-${mode}` : `${alg}-${mode}`;
  return crypto().getCiphers().includes(name) ? name : undefined;
}

export interface SectorCipherSpec {
  /** QEMU's name: aes-128, aes-192, aes-256, sm4. */
  alg: string;
  mode: CipherMode;
  ivgen: IvgenAlg;
  /** essiv only: the hash that keys the IV cipher. */
  ivgenHash?: string;
  /** essiv only: the cipher that encrypts the sector number. */
  ivgenAlg?: string;
}

/** Encrypts and decrypts whole sectors in place, each with the IV of its sector number. */
export class SectorCipher {
  private readonly cipherName?: string;
  private readonly xts?: XtsOverEcb;
  private readonly essivKey?: Buffer;
  private readonly essivCipher?: string;

  constructor(
    readonly spec: SectorCipherSpec,
    private readonly key: Uint8Array,
  ) {
    this.cipherName = opensslCipher(spec.alg, spec.mode);
    if (!this.cipherName) {
      const ecb = opensslCipher(spec.alg, 'ecb');
      if (spec.mode !== 'xts' || !ecb) {
        throw new BlkioError('ENOTSUP', `Cipher algorithm '${spec.alg}' with mode '${spec.mode}' is not supported`);
      }
      this.xts = new XtsOverEcb(ecb, key);
    }
    if (spec.ivgen === 'essiv') {
      this.essivKey = crypto().createHash(spec.ivgenHash!).update(key).digest();
      this.essivCipher = opensslCipher(spec.ivgenAlg!, 'ecb');
      if (!this.essivCipher) throw new BlkioError('ENOTSUP', `Cipher algorithm '${spec.ivgenAlg}' is not supported`);
    }
  }

  encrypt(buf: Uint8Array, firstSector: number): void {
    this.run(buf, firstSector, true);
  }

  decrypt(buf: Uint8Array, firstSector: number): void {
    this.run(buf, firstSector, false);
  }

  private run(buf: Uint8Array, firstSector: number, encrypt: boolean): void {
    for (let pos = 0; pos < buf.length; pos += SECTOR_SIZE) {
      const sector = buf.subarray(pos, pos + SECTOR_SIZE);
      const iv = this.spec.mode === 'ecb' ? null : this.iv(firstSector + pos / SECTOR_SIZE);
      if (this.xts) {
        this.xts.run(sector, iv!, encrypt);
        continue;
      }
      const c = encrypt
        ? crypto().createCipheriv(this.cipherName!, this.key, iv)
        : crypto().createDecipheriv(this.cipherName!, this.key, iv);
      c.setAutoPadding(false);
      sector.set(c.update(sector));
      c.final();
    }
  }

  private iv(sector: number): Buffer {
    const iv = Buffer.alloc(BLOCK_BYTES);
    if (this.spec.ivgen === 'plain') {
      iv.writeUInt32LE(sector % 2 ** 32);
      return iv;
    }
    iv.writeBigUInt64LE(BigInt(sector));
    if (this.spec.ivgen === 'plain64') return iv;
    const essiv = crypto().createCipheriv(this.essivCipher!, this.essivKey!, null).setAutoPadding(false);
    return essiv.update(iv);
  }
}

/**
 * XTS built from the block cipher in ECB mode, for ciphers OpenSSL has no XTS of (aes-192,
 * sm4): each block is XORed with its tweak before and after the cipher, the tweak starting
 * as the encrypted IV and multiplied by x in GF(2^128) from block to block.
 */
class XtsOverEcb {
  private readonly dataKey: Uint8Array;
  private readonly tweakKey: Uint8Array;

  constructor(
    private readonly ecb: string,
    key: Uint8Array,
  ) {
    this.dataKey = key.subarray(0, key.length / 2);
    this.tweakKey = key.subarray(key.length / 2);
  }

  run(data: Uint8Array, iv: Uint8Array, encrypt: boolean): void {
    if (data.length % BLOCK_BYTES) throw new BlkioError('EINVAL', `XTS data must be a multiple of ${BLOCK_BYTES} bytes`);
    const tweak = Buffer.from(this.cipher(this.tweakKey, true).update(iv));
    const tweaks = new Uint8Array(data.length);
    for (let at = 0; at < data.length; at += BLOCK_BYTES) {
      tweaks.set(tweak, at);
      multiplyByX(tweak);
    }
    xorInto(data, tweaks);
    data.set(this.cipher(this.dataKey, encrypt).update(data));
    xorInto(data, tweaks);
  }

  private cipher(key: Uint8Array, encrypt: boolean): import('node:crypto').Cipher | import('node:crypto').Decipher {
    const c = encrypt ? crypto().createCipheriv(this.ecb, key, null) : crypto().createDecipheriv(this.ecb, key, null);
    return c.setAutoPadding(false);
  }
}

/** Multiply a little-endian GF(2^128) element by x (XTS's alpha), in place. */
function multiplyByX(t: Uint8Array): void {
  const carry = t[BLOCK_BYTES - 1]! >> 7;
  for (let i = BLOCK_BYTES - 1; i > 0; i--) t[i] = ((t[i]! << 1) | (t[i - 1]! >> 7)) & 0xff;
  t[0] = ((t[0]! << 1) & 0xff) ^ (carry ? 0x87 : 0);
}

export function xorInto(target: Uint8Array, source: Uint8Array): void {
  for (let i = 0; i < target.length; i++) target[i]! ^= source[i]!;
}

/** An open image's encryption: the data cipher and which offset numbers the sectors. */
export interface Qcow2Encryption {
  cipher: SectorCipher;
  /** LUKS numbers sectors by host offset, legacy AES by guest offset. */
  byHostOffset: boolean;
  /** LUKS: the unlocked volume, for amending its key slots. */
  luks?: { header: LuksHeader; masterKey: Uint8Array };
}

function firstSector(e: Qcow2Encryption, guestOffset: number, hostOffset: number): number {
  return (e.byHostOffset ? hostOffset : guestOffset) / SECTOR_SIZE;
}

/** Decrypt data just read from `hostOffset` (guest data at `guestOffset`), in place. */
export function decryptData(e: Qcow2Encryption, buf: Uint8Array, guestOffset: number, hostOffset: number): void {
  e.cipher.decrypt(buf, firstSector(e, guestOffset, hostOffset));
}

/** Encrypt guest data about to be written at `hostOffset`, in place. */
export function encryptInPlace(e: Qcow2Encryption, buf: Uint8Array, guestOffset: number, hostOffset: number): void {
  e.cipher.encrypt(buf, firstSector(e, guestOffset, hostOffset));
}

/** The encrypted copy of the caller's guest data (which stays as it is). */
export function encryptedCopy(e: Qcow2Encryption, buf: Uint8Array, guestOffset: number, hostOffset: number): Uint8Array {
  const copy = Uint8Array.from(buf);
  encryptInPlace(e, copy, guestOffset, hostOffset);
  return copy;
}

/** Legacy qcow AES: AES-128-CBC keyed by the secret's first 16 bytes (zero-padded), plain64 IVs. */
export function legacyAesEncryption(secret: Uint8Array): Qcow2Encryption {
  const key = new Uint8Array(16);
  key.set(secret.subarray(0, 16));
  return { cipher: new SectorCipher({ alg: 'aes-128', mode: 'cbc', ivgen: 'plain64' }, key), byHostOffset: false };
}
