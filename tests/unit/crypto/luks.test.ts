import { describe, expect, it } from 'vitest';
import { amendLuks, buildLuksHeader, createLuks, luksCipherSpec, luksInfo, parseLuksHeader, unlockLuks } from '../../../src/crypto/luks.js';

describe('LUKS', () => {
  const password = Buffer.from('pass');
  const options = { cipherAlg: 'aes-128', cipherMode: 'xts' as const, ivgenAlg: 'plain64' as const, hashAlg: 'sha256', iterTime: 1 };

  it('unlocks a volume it created, with its master key, and only with the right password', async () => {
    const { header, area, masterKey } = await createLuks(options, password);
    expect(header.payloadOffset * 512).toBe(area.length);
    // 32 key bytes times 4000 stripes, in whole 4 KiB: 256 sectors per slot after the 4 KiB header.
    expect(header.slots.map((s) => s.keyOffset)).toEqual([8, 264, 520, 776, 1032, 1288, 1544, 1800]);
    const readAt = async (at: number, bytes: number): Promise<Uint8Array> => area.slice(at, at + bytes);
    const parsed = parseLuksHeader(area.subarray(0, 592));
    const cipherSpec = luksCipherSpec(parsed);
    expect(Buffer.from(await unlockLuks(parsed, cipherSpec, password, readAt))).toEqual(Buffer.from(masterKey));
    await expect(unlockLuks(parsed, cipherSpec, Buffer.from('pas'), readAt)).rejects.toThrow('Invalid password, cannot unlock any keyslot');
  });

  it('adds and erases key slots, refusing to erase the last key', async () => {
    const { header, area, masterKey } = await createLuks(options, password);
    const readAt = async (at: number, bytes: number): Promise<Uint8Array> => area.slice(at, at + bytes);
    const write = async (at: number, data: Uint8Array): Promise<void> => area.set(data, at);
    const other = Buffer.from('other');
    const cipherSpec = luksCipherSpec(header);
    await amendLuks(header, cipherSpec, masterKey, { state: 'active', newPassword: other, iterTime: 1 }, false, readAt, write);
    const reread = parseLuksHeader(area.subarray(0, 592));
    expect(reread.slots.map((s) => s.active)).toEqual([true, true, false, false, false, false, false, false]);
    expect(Buffer.from(await unlockLuks(reread, cipherSpec, other, readAt))).toEqual(Buffer.from(masterKey));
    await amendLuks(header, cipherSpec, masterKey, { state: 'inactive', oldPassword: password, iterTime: 1 }, false, readAt, write);
    await expect(unlockLuks(parseLuksHeader(area.subarray(0, 592)), cipherSpec, password, readAt)).rejects.toThrow('Invalid password');
    await expect(amendLuks(header, cipherSpec, masterKey, { state: 'inactive', keyslot: 1, iterTime: 1 }, false, readAt, write))
      .rejects.toThrow('Attempt to erase the only active keyslot 1');
  });

  it('describes the header as qemu-img info does', async () => {
    const { header } = await createLuks({ ...options, cipherMode: 'cbc', ivgenAlg: 'essiv', ivgenHashAlg: 'sha256' }, password);
    const info = luksInfo(header, luksCipherSpec(header));
    expect(info).toMatchObject({
      format: 'luks', 'cipher-alg': 'aes-128', 'cipher-mode': 'cbc', 'ivgen-alg': 'essiv', 'ivgen-hash-alg': 'sha256',
      'hash-alg': 'sha256', 'payload-offset': 4096 + 8 * 65536,
    });
    expect((info.slots as unknown[])[1]).toEqual({ active: false, 'key-offset': 4096 + 65536 });
  });

  it('parses what it builds and refuses what is not LUKS1', async () => {
    const { header } = await createLuks(options, password);
    expect(buildLuksHeader(parseLuksHeader(buildLuksHeader(header)))).toEqual(buildLuksHeader(header));
    expect(() => parseLuksHeader(new Uint8Array(592))).toThrow('Volume is not in LUKS format');
    const v2 = buildLuksHeader(header);
    v2[7] = 2;
    expect(() => parseLuksHeader(v2)).toThrow('LUKS version 2 is not supported');
    expect(() => luksCipherSpec({ ...header, cipherMode: 'xts-essiv:sha1' })).toThrow('No AES cipher with key size 20 available');
  });
});
