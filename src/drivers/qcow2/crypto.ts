/**
 * The hooks the qcow2 read and write paths call to encrypt data. Legacy AES (crypt_method 1)
 * keys the sectors by guest offset; LUKS (crypt_method 2) by host offset.
 */
import { qcowAesCipher, SECTOR_SIZE, SectorCipher } from '../../crypto/sector-cipher.js';
import type { LuksHeader } from '../../crypto/luks.js';

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

/** Legacy qcow AES, keyed by the guest offset. */
export function legacyAesEncryption(secret: Uint8Array): Qcow2Encryption {
  return { cipher: qcowAesCipher(secret), byHostOffset: false };
}
