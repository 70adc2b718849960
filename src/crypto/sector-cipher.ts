/**
 * Sector encryption: a block cipher in a mode (ecb, cbc, xts, ctr) with an IV generator
 * (plain, plain64, essiv) applied per 512-byte sector, as QEMU's crypto/block.c. Shared by
 * qcow2's encryption and the luks format.
 */
import { BlkioError } from '../errors.js';
import { lazyBuiltin } from '../lazy-builtin.js';

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
    // XTS runs over ECB: one cipher call for a whole request instead of one per sector.
    const ecb = spec.mode === 'xts' ? opensslCipher(spec.alg, 'ecb') : undefined;
    if (ecb) this.xts = new XtsOverEcb(ecb, key);
    else this.cipherName = opensslCipher(spec.alg, spec.mode);
    if (!this.xts && !this.cipherName) {
      throw new BlkioError('ENOTSUP', `Cipher algorithm '${spec.alg}' with mode '${spec.mode}' is not supported`);
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
    const sectors = Math.ceil(buf.length / SECTOR_SIZE);
    if (this.xts) {
      this.xts.run(buf, this.ivs(firstSector, sectors), encrypt);
      return;
    }
    const ivs = this.spec.mode === 'ecb' ? null : this.ivs(firstSector, sectors);
    for (let i = 0; i < sectors; i++) {
      const sector = buf.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE);
      const iv = ivs && ivs.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES);
      const c = encrypt
        ? crypto().createCipheriv(this.cipherName!, this.key, iv)
        : crypto().createDecipheriv(this.cipherName!, this.key, iv);
      c.setAutoPadding(false);
      sector.set(c.update(sector));
      c.final();
    }
  }

  /** The IVs of `count` sectors from `firstSector`, one block each; essiv encrypts them all in one call. */
  private ivs(firstSector: number, count: number): Uint8Array {
    const ivs = Buffer.alloc(count * BLOCK_BYTES);
    for (let i = 0; i < count; i++) {
      const sector = firstSector + i;
      ivs.writeUInt32LE(sector % 2 ** 32, i * BLOCK_BYTES);
      // plain keeps the low 32 bits only; plain64 and essiv take the sector number as 64 bits.
      if (this.spec.ivgen !== 'plain') ivs.writeUInt32LE(Math.floor(sector / 2 ** 32), i * BLOCK_BYTES + 4);
    }
    if (this.spec.ivgen !== 'essiv') return ivs;
    const essiv = crypto().createCipheriv(this.essivCipher!, this.essivKey!, null).setAutoPadding(false);
    return essiv.update(ivs);
  }
}

/**
 * XTS built from the block cipher in ECB mode: each block is XORed with its tweak before and
 * after the cipher, a sector's tweak starting as its encrypted IV and multiplied by x in
 * GF(2^128) from block to block. All sectors of a request go through each cipher at once.
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

  /** `data` in sectors (the last may be short), `ivs` one block per sector. */
  run(data: Uint8Array, ivs: Uint8Array, encrypt: boolean): void {
    if (data.length % BLOCK_BYTES) throw new BlkioError('EINVAL', `XTS data must be a multiple of ${BLOCK_BYTES} bytes`);
    const firstTweaks = this.cipher(this.tweakKey, true).update(ivs);
    const tweaks = new Uint8Array(data.length);
    const out = new DataView(tweaks.buffer);
    const first = new DataView(firstTweaks.buffer, firstTweaks.byteOffset, firstTweaks.length);
    for (let sector = 0; sector * SECTOR_SIZE < data.length; sector++) {
      // The tweak as four little-endian words, low first.
      let t0 = first.getUint32(sector * 16, true);
      let t1 = first.getUint32(sector * 16 + 4, true);
      let t2 = first.getUint32(sector * 16 + 8, true);
      let t3 = first.getUint32(sector * 16 + 12, true);
      const end = Math.min(data.length, (sector + 1) * SECTOR_SIZE);
      for (let at = sector * SECTOR_SIZE; at < end; at += BLOCK_BYTES) {
        out.setUint32(at, t0, true);
        out.setUint32(at + 4, t1, true);
        out.setUint32(at + 8, t2, true);
        out.setUint32(at + 12, t3, true);
        const carry = t3 >>> 31;
        t3 = ((t3 << 1) | (t2 >>> 31)) >>> 0;
        t2 = ((t2 << 1) | (t1 >>> 31)) >>> 0;
        t1 = ((t1 << 1) | (t0 >>> 31)) >>> 0;
        t0 = ((t0 << 1) ^ (carry ? 0x87 : 0)) >>> 0;
      }
    }
    // Word-wise XOR needs 4-byte alignment: a view of another buffer may lack it.
    const work = data.byteOffset % 4 ? Uint8Array.from(data) : data;
    xorWords(work, tweaks);
    work.set(this.cipher(this.dataKey, encrypt).update(work));
    xorWords(work, tweaks);
    if (work !== data) data.set(work);
  }

  private cipher(key: Uint8Array, encrypt: boolean): import('node:crypto').Cipher | import('node:crypto').Decipher {
    const c = encrypt ? crypto().createCipheriv(this.ecb, key, null) : crypto().createDecipheriv(this.ecb, key, null);
    return c.setAutoPadding(false);
  }
}

/** XOR two buffers of their own (4-byte aligned, a multiple of 4 bytes long) a word at a time. */
function xorWords(target: Uint8Array, source: Uint8Array): void {
  const t = new Uint32Array(target.buffer, target.byteOffset, target.length / 4);
  const s = new Uint32Array(source.buffer, source.byteOffset, source.length / 4);
  for (let i = 0; i < t.length; i++) t[i]! ^= s[i]!;
}

export function xorInto(target: Uint8Array, source: Uint8Array): void {
  for (let i = 0; i < target.length; i++) target[i]! ^= source[i]!;
}

/** qcow's legacy AES (qcow v1, qcow2 crypt_method 1): AES-128-CBC keyed by the secret's first 16 bytes (zero-padded), plain64 IVs. */
export function qcowAesCipher(secret: Uint8Array): SectorCipher {
  const key = new Uint8Array(16);
  key.set(secret.subarray(0, 16));
  return new SectorCipher({ alg: 'aes-128', mode: 'cbc', ivgen: 'plain64' }, key);
}
