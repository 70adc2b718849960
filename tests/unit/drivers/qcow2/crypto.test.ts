import { describe, expect, it } from 'vitest';
import { legacyAesEncryption, decryptData, encryptedCopy } from '../../../../src/drivers/qcow2/crypto.js';
import { SectorCipher, type SectorCipherSpec } from '../../../../src/crypto/sector-cipher.js';
import { checkEncryptOptions, encryptionCreateSettings, encryptionKeySecret } from '../../../../src/drivers/qcow2/encryption.js';

const hex = (text: string): Uint8Array => Uint8Array.from(Buffer.from(text, 'hex'));

/**
 * Known answers from images QEMU 7.2 made: the first 32 bytes of a data cluster holding 0x5a
 * bytes, with the master key this code unlocked from the image's LUKS header (password "abc").
 */
const QEMU_VECTORS: Array<{ name: string; spec: SectorCipherSpec; key: string; hostOffset: number; ciphertext: string }> = [
  {
    name: 'aes-256-xts-plain64',
    spec: { alg: 'aes-256', mode: 'xts', ivgen: 'plain64' },
    key: '3a6ac15dfb0d4a65d61dafc44af78f735807d11b93bf582dd12ceb4df9eef6f05644b73461fb85d5b2b660491a93a12a66edfab8c5d26aad450e767041983dbf',
    hostOffset: 2424832,
    ciphertext: 'b824b1a3cff90e89747b6411094dc5886b6d72bb6efca360fd270bdd732505fb',
  },
  {
    name: 'aes-192-xts-plain64 (XTS over ECB: OpenSSL has no aes-192-xts)',
    spec: { alg: 'aes-192', mode: 'xts', ivgen: 'plain64' },
    key: 'cf80770c6b85d41c9bdfcbd1212279017b25698c33eff36b4b610b772e5f8cb98b495d491339bab5e2d4d75dc2b56ae9',
    hostOffset: 1900544,
    ciphertext: 'fc9a0b96fcd4252eddf7ec0f46c9cecaca573c498a2e4b25dbee83e206de3037',
  },
  {
    name: 'aes-128-cbc-essiv:sha256',
    spec: { alg: 'aes-128', mode: 'cbc', ivgen: 'essiv', ivgenHash: 'sha256', ivgenAlg: 'aes-256' },
    key: 'c7ccceeb82e75fd5b99590f6ed588466',
    hostOffset: 917504,
    ciphertext: '6d3f5013e10eec0d57c55e2edb21e2c8de15381fd59406e24ac65223c5355c99',
  },
];

describe('sector ciphers', () => {
  for (const v of QEMU_VECTORS) {
    it(`decrypts QEMU's ${v.name} data by host sector`, () => {
      const data = hex(v.ciphertext);
      decryptData({ cipher: new SectorCipher(v.spec, hex(v.key)), byHostOffset: true }, data, 0, v.hostOffset);
      expect(Buffer.from(data).toString('hex')).toBe('5a'.repeat(32));
    });
  }

  it("decrypts QEMU's legacy AES data by guest sector (key: the secret, zero-padded)", () => {
    const data = hex('32c4466c137502b4cd25f63c700396b34015e9ff4c8afbb3a95f1170e26e58fe');
    decryptData(legacyAesEncryption(Buffer.from('abc')), data, 0, 327680);
    expect(Buffer.from(data).toString('hex')).toBe('5a'.repeat(32));
  });

  it('round-trips every mode and IV generator, leaving the caller buffer alone', () => {
    const specs: SectorCipherSpec[] = [
      { alg: 'aes-128', mode: 'ecb', ivgen: 'plain64' },
      { alg: 'aes-256', mode: 'cbc', ivgen: 'plain' },
      { alg: 'aes-128', mode: 'ctr', ivgen: 'plain64' },
      { alg: 'aes-192', mode: 'xts', ivgen: 'essiv', ivgenHash: 'sha256', ivgenAlg: 'aes-256' },
    ];
    for (const spec of specs) {
      const keyBytes = (spec.mode === 'xts' ? 2 : 1) * Number(spec.alg.slice(4)) / 8;
      const e = { cipher: new SectorCipher(spec, new Uint8Array(keyBytes).fill(7)), byHostOffset: false };
      const plain = Uint8Array.from({ length: 1536 }, (_, i) => i & 0xff);
      const copy = encryptedCopy(e, plain, 4096, 0);
      expect(copy).not.toEqual(plain);
      expect(plain[1]).toBe(1);
      // Sector 9 encrypts differently from sector 8: the IV moves with the offset (ECB has none).
      if (spec.mode !== 'ecb') expect(encryptedCopy(e, plain, 4608, 0).subarray(0, 512)).not.toEqual(copy.subarray(0, 512));
      decryptData(e, copy, 4096, 0);
      expect(copy).toEqual(plain);
    }
  });

  it('refuses ciphers Node cannot run', () => {
    expect(() => new SectorCipher({ alg: 'twofish-128', mode: 'cbc', ivgen: 'plain64' }, new Uint8Array(16)))
      .toThrow("Cipher algorithm 'twofish-128' with mode 'cbc' is not supported");
  });
});

describe('encrypt options', () => {
  it('checks runtime options against the header as QEMU does', () => {
    expect(() => checkEncryptOptions(2, { format: 'aes' })).toThrow("Header reported 'luks' encryption format but options specify 'aes'");
    expect(() => checkEncryptOptions(0, { format: 'luks' })).toThrow("No encryption in image header, but options specified format 'luks'");
    expect(() => checkEncryptOptions(1, { 'key-secret': 's', 'iter-time': 1 })).toThrow("Parameter 'iter-time' is unexpected");
    expect(() => checkEncryptOptions(0, { 'key-secret': 's' })).not.toThrow();
    expect(() => checkEncryptOptions(3, {})).toThrow('Unsupported encryption method 3');
  });

  it('validates create options in QEMU order, with its texts', () => {
    expect(encryptionCreateSettings({})).toBeUndefined();
    expect(encryptionCreateSettings({ encryption: true, 'encrypt.key-secret': 's' })).toEqual({ format: 'aes', keySecret: 's' });
    // A missing key secret is refused later, when the image (already sized) gets its encryption.
    const keyless = encryptionCreateSettings({ encryption: true })!;
    expect(keyless).toEqual({ format: 'aes' });
    expect(() => encryptionKeySecret(keyless)).toThrow("Parameter 'encrypt.key-secret' is required for cipher");
    expect(() => encryptionCreateSettings({ 'encrypt.format': 'foo' })).toThrow("Parameter 'format' does not accept value 'foo'");
    expect(() => encryptionCreateSettings({ 'encrypt.format': 'aes', 'encrypt.key-secret': 's', 'encrypt.iter-time': 10 }))
      .toThrow("Parameter 'encrypt.iter-time' is unexpected");
    expect(() => encryptionCreateSettings({ 'encrypt.format': 'luks', 'encrypt.key-secret': 's', 'encrypt.cipher-alg': 'foo' }))
      .toThrow("Parameter 'cipher-alg' does not accept value 'foo'");
    expect(encryptionCreateSettings({ 'encrypt.format': 'luks', 'encrypt.key-secret': 's' })).toMatchObject({
      luks: { cipherAlg: 'aes-256', cipherMode: 'xts', ivgenAlg: 'plain64', hashAlg: 'sha256', iterTime: 2000 },
    });
  });
});
