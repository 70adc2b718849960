/**
 * LUKS1 (QEMU's crypto/block-luks.c), as the luks format and qcow2's crypto header extension keep it: the
 * 592-byte header, eight key slots of PBKDF2-derived keys over anti-forensically split copies
 * of the master key, and the master key digest that tells a right password from a wrong one.
 * Offsets inside are 512-byte sectors from the start of the LUKS header.
 */
import { BlkioError } from '../errors.js';
import type { CreateOptionSpec } from '../block/driver.js';
import { latin1CString } from '../byte-strings.js';
import {
  CIPHER_MODES, cipherKeyBytes, crypto, IVGEN_ALGS, SECTOR_SIZE, SectorCipher, xorInto, type CipherMode, type IvgenAlg,
  type SectorCipherSpec,
} from './sector-cipher.js';

function pbkdf2(password: Uint8Array | string, salt: Uint8Array | string, iterations: number, bytes: number, hash: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    crypto().pbkdf2(password, salt, iterations, bytes, hash, (e, key) => (e ? reject(e) : resolve(key)));
  });
}

function createHash(hash: string): import('node:crypto').Hash {
  return crypto().createHash(hash);
}

function digestBytes(hash: string): number {
  return createHash(hash).digest().length;
}

const MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
export const LUKS_HEADER_BYTES = 592;
const SLOT_COUNT = 8;
const SLOT_ACTIVE = 0x00ac71f3;
const SLOT_INACTIVE = 0x0000dead;
const DIGEST_BYTES = 20;
const SALT_BYTES = 32;
const STRIPES = 4000;
const MIN_SLOT_ITERATIONS = 1000;
const MIN_DIGEST_ITERATIONS = 1000;
/** Key material and payload start on 4 KiB boundaries. */
const ALIGN_BYTES = 4096;

export const HASH_ALGS = ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160'] as const;

export interface LuksSlot {
  active: boolean;
  iterations: number;
  salt: Uint8Array;
  /** Sectors from the header start. */
  keyOffset: number;
  stripes: number;
}

export interface LuksHeader {
  cipherName: string;
  cipherMode: string;
  hashSpec: string;
  /** Sectors from the header start. */
  payloadOffset: number;
  keyBytes: number;
  mkDigest: Uint8Array;
  mkDigestSalt: Uint8Array;
  mkDigestIterations: number;
  uuid: string;
  slots: LuksSlot[];
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** Whether `raw` starts with the LUKS1 magic and version (format probing; parseLuksHeader checks the rest). */
export function isLuksVolume(raw: Uint8Array): boolean {
  return raw.length >= 8 && Buffer.from(raw.subarray(0, 6)).equals(MAGIC) && raw[6] === 0 && raw[7] === 1;
}

/** Parse and check a LUKS1 header as QEMU does before it trusts any field. */
export function parseLuksHeader(raw: Uint8Array): LuksHeader {
  if (raw.length < LUKS_HEADER_BYTES || !Buffer.from(raw.subarray(0, 6)).equals(MAGIC)) throw invalid('Volume is not in LUKS format');
  const view = new DataView(raw.buffer, raw.byteOffset, raw.length);
  const version = view.getUint16(6);
  if (version !== 1) throw invalid(`LUKS version ${version} is not supported`);
  const text = (start: number, end: number, what: string): string => {
    const bytes = raw.subarray(start, end);
    if (!bytes.includes(0)) throw invalid(`LUKS header ${what} is not NUL terminated`);
    return latin1CString(bytes);
  };
  const header: LuksHeader = {
    cipherName: text(8, 40, 'cipher name'), cipherMode: text(40, 72, 'cipher mode'), hashSpec: text(72, 104, 'hash spec'),
    payloadOffset: view.getUint32(104), keyBytes: view.getUint32(108),
    mkDigest: raw.slice(112, 132), mkDigestSalt: raw.slice(132, 164), mkDigestIterations: view.getUint32(164),
    uuid: latin1CString(raw.subarray(168, 208)), slots: [],
  };
  const headerSectors = ALIGN_BYTES / SECTOR_SIZE;
  if (header.payloadOffset < headerSectors) throw invalid('LUKS payload is overlapping with the header');
  if (header.mkDigestIterations === 0) throw invalid('LUKS key iteration count is zero');
  const keyMaterialEnd = (slot: LuksSlot): number => slot.keyOffset + keyMaterialSectors(header.keyBytes, slot.stripes);
  for (let i = 0; i < SLOT_COUNT; i++) {
    const at = 208 + 48 * i;
    const state = view.getUint32(at);
    const slot: LuksSlot = {
      active: state === SLOT_ACTIVE, iterations: view.getUint32(at + 4),
      salt: raw.slice(at + 8, at + 40), keyOffset: view.getUint32(at + 40), stripes: view.getUint32(at + 44),
    };
    if (slot.stripes !== STRIPES) throw invalid(`Keyslot ${i} is corrupted (stripes ${slot.stripes | 0} != ${STRIPES})`);
    if (state !== SLOT_ACTIVE && state !== SLOT_INACTIVE) throw invalid(`Keyslot ${i} state (active/disable) is corrupted`);
    if (slot.active && slot.iterations === 0) throw invalid(`Keyslot ${i} iteration count is zero`);
    if (slot.keyOffset < headerSectors) throw invalid(`Keyslot ${i} is overlapping with the LUKS header`);
    if (keyMaterialEnd(slot) > header.payloadOffset) {
      throw invalid(`Keyslot ${i} is overlapping with the encrypted payload`);
    }
    header.slots.push(slot);
  }
  header.slots.forEach((a, i) => {
    header.slots.forEach((b, j) => {
      if (j <= i) return;
      if (a.keyOffset < keyMaterialEnd(b) && b.keyOffset < keyMaterialEnd(a)) {
        throw invalid(`Keyslots ${i} and ${j} are overlapping in the header`);
      }
    });
  });
  return header;
}

export function buildLuksHeader(h: LuksHeader): Uint8Array {
  const raw = new Uint8Array(LUKS_HEADER_BYTES);
  const view = new DataView(raw.buffer);
  const put = (at: number, text: string): void => raw.set(Buffer.from(text, 'latin1'), at);
  raw.set(MAGIC, 0);
  view.setUint16(6, 1);
  put(8, h.cipherName);
  put(40, h.cipherMode);
  put(72, h.hashSpec);
  view.setUint32(104, h.payloadOffset);
  view.setUint32(108, h.keyBytes);
  raw.set(h.mkDigest, 112);
  raw.set(h.mkDigestSalt, 132);
  view.setUint32(164, h.mkDigestIterations);
  put(168, h.uuid);
  h.slots.forEach((slot, i) => {
    const at = 208 + 48 * i;
    view.setUint32(at, slot.active ? SLOT_ACTIVE : SLOT_INACTIVE);
    view.setUint32(at + 4, slot.iterations);
    raw.set(slot.salt, at + 8);
    view.setUint32(at + 40, slot.keyOffset);
    view.setUint32(at + 44, slot.stripes);
  });
  return raw;
}

/** The header's cipher as QEMU understands it: algorithm with key size, mode and IV generator. */
export function luksCipherSpec(h: LuksHeader): SectorCipherSpec {
  const [modeName, ivgenSpec] = splitOnce(h.cipherMode, '-');
  if (ivgenSpec === undefined) throw invalid(`Unexpected cipher mode string format '${h.cipherMode}'`);
  const [ivgenName, ivgenHash] = splitOnce(ivgenSpec, ':');
  if (ivgenHash !== undefined) checkHash(ivgenHash);
  if (!(CIPHER_MODES as readonly string[]).includes(modeName)) throw invalid(`Cipher mode '${modeName}' not supported`);
  const mode = modeName as CipherMode;
  // xts keys two ciphers with the two halves of the key.
  const algKeyBytes = mode === 'xts' ? h.keyBytes / 2 : h.keyBytes;
  const alg = h.cipherName === 'sm4' ? 'sm4' : `${h.cipherName}-${algKeyBytes * 8}`;
  if (cipherKeyBytes(alg) !== algKeyBytes) throw invalid(`Algorithm '${h.cipherName}' with key size ${algKeyBytes} bytes not supported`);
  checkHash(h.hashSpec);
  if (!(IVGEN_ALGS as readonly string[]).includes(ivgenName)) throw invalid(`IV generator '${ivgenName}' not supported`);
  const ivgen = ivgenName as IvgenAlg;
  if (ivgen !== 'essiv') return { alg, mode, ivgen };
  if (ivgenHash === undefined) throw invalid('Missing IV generator hash specification');
  // The IV cipher takes the hash as its key: its key size follows the digest size.
  const essivKeyBytes = digestBytes(ivgenHash);
  const ivgenAlg = `${h.cipherName}-${essivKeyBytes * 8}`;
  if (cipherKeyBytes(ivgenAlg) !== essivKeyBytes) {
    throw invalid(`No ${h.cipherName.toUpperCase()} cipher with key size ${essivKeyBytes} available`);
  }
  return { alg, mode, ivgen, ivgenHash, ivgenAlg };
}

function splitOnce(text: string, separator: string): [string, string | undefined] {
  const at = text.indexOf(separator);
  return at < 0 ? [text, undefined] : [text.slice(0, at), text.slice(at + 1)];
}

function checkHash(hash: string): void {
  if (!(HASH_ALGS as readonly string[]).includes(hash)) throw invalid(`Hash algorithm '${hash}' not supported`);
}

/** The `encrypt` member of qemu-img info (QCryptoBlockInfoLUKS), members in QAPI order. */
export function luksInfo(h: LuksHeader, cipherSpec: SectorCipherSpec): Record<string, unknown> {
  return {
    format: 'luks', 'cipher-alg': cipherSpec.alg, 'cipher-mode': cipherSpec.mode, 'ivgen-alg': cipherSpec.ivgen,
    ...(cipherSpec.ivgenHash ? { 'ivgen-hash-alg': cipherSpec.ivgenHash } : {}),
    'hash-alg': h.hashSpec, 'payload-offset': h.payloadOffset * SECTOR_SIZE, 'master-key-iters': h.mkDigestIterations,
    uuid: h.uuid,
    slots: h.slots.map((slot) => ({
      active: slot.active,
      ...(slot.active ? { iters: slot.iterations, stripes: slot.stripes } : {}),
      'key-offset': slot.keyOffset * SECTOR_SIZE,
    })),
  };
}

/** Bytes of a slot's split key material, rounded up to whole sectors. */
function splitKeyBytes(h: LuksHeader, slot: LuksSlot): number {
  return Math.ceil((h.keyBytes * slot.stripes) / SECTOR_SIZE) * SECTOR_SIZE;
}

/** Sectors a slot's key material spans in the header, in whole 4 KiB as QEMU lays it out and checks it. */
function keyMaterialSectors(keyBytes: number, stripes: number): number {
  return Math.ceil((keyBytes * stripes) / ALIGN_BYTES) * (ALIGN_BYTES / SECTOR_SIZE);
}

/** Spread the hash over `block` in `pieceBytes` (digest-sized) pieces, each hashed with its big-endian index. */
function diffuse(block: Uint8Array, hash: string, pieceBytes: number): void {
  const index = Buffer.alloc(4);
  for (let i = 0, at = 0; at < block.length; i++, at += pieceBytes) {
    const piece = block.subarray(at, Math.min(block.length, at + pieceBytes));
    index.writeUInt32BE(i);
    piece.set(createHash(hash).update(index).update(piece).digest().subarray(0, piece.length));
  }
}

/** XOR-and-diffuse the first stripes-1 stripes of `split`: what the last stripe is XORed with. */
function diffusedStripes(split: Uint8Array, keyBytes: number, stripes: number, hash: string): Uint8Array {
  const block = new Uint8Array(keyBytes);
  const pieceBytes = digestBytes(hash);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(block, split.subarray(i * keyBytes, (i + 1) * keyBytes));
    diffuse(block, hash, pieceBytes);
  }
  return block;
}

/** Anti-forensic merge: the diffused stripes XOR the last one. */
function afMerge(split: Uint8Array, keyBytes: number, stripes: number, hash: string): Uint8Array {
  const block = diffusedStripes(split, keyBytes, stripes, hash);
  xorInto(block, split.subarray((stripes - 1) * keyBytes, stripes * keyBytes));
  return block;
}

/** Anti-forensic split: random stripes but the last, which makes the merge yield `key`. */
function afSplit(key: Uint8Array, stripes: number, hash: string): Uint8Array {
  const split = new Uint8Array(key.length * stripes);
  split.set(crypto().randomBytes(key.length * (stripes - 1)));
  const last = diffusedStripes(split, key.length, stripes, hash);
  xorInto(last, key);
  split.set(last, (stripes - 1) * key.length);
  return split;
}

async function digestMatches(h: LuksHeader, masterKey: Uint8Array): Promise<boolean> {
  const digest = await pbkdf2(masterKey, h.mkDigestSalt, h.mkDigestIterations, DIGEST_BYTES, h.hashSpec);
  return digest.equals(h.mkDigest);
}

/**
 * Find the master key: try each active slot with the password (`readAt` reads bytes at an
 * offset from the header start). Fails with QEMU's text when no slot opens.
 */
export async function unlockLuks(
  h: LuksHeader, cipherSpec: SectorCipherSpec, password: Uint8Array, readAt: (offset: number, bytes: number) => Promise<Uint8Array>,
): Promise<Uint8Array> {
  for (const slot of h.slots) {
    if (!slot.active) continue;
    const masterKey = await openSlot(h, cipherSpec, slot, password, readAt);
    if (masterKey) return masterKey;
  }
  throw new BlkioError('EACCES', 'Invalid password, cannot unlock any keyslot');
}

/** The master key if `password` opens `slot`; the key material is encrypted with the data cipher, keyed with the slot key. */
async function openSlot(
  h: LuksHeader, cipherSpec: SectorCipherSpec, slot: LuksSlot, password: Uint8Array,
  readAt: (offset: number, bytes: number) => Promise<Uint8Array>,
): Promise<Uint8Array | undefined> {
  const slotKey = await pbkdf2(password, slot.salt, slot.iterations, h.keyBytes, h.hashSpec);
  const material = (await readAt(slot.keyOffset * SECTOR_SIZE, splitKeyBytes(h, slot))).subarray(0, h.keyBytes * slot.stripes);
  new SectorCipher(cipherSpec, slotKey).decrypt(material, 0);
  const masterKey = afMerge(material, h.keyBytes, slot.stripes, h.hashSpec);
  return (await digestMatches(h, masterKey)) ? masterKey : undefined;
}

const CIPHER_ALGS = [
  'aes-128', 'aes-192', 'aes-256', 'des', '3des', 'cast5-128', 'serpent-128', 'serpent-192', 'serpent-256',
  'twofish-128', 'twofish-192', 'twofish-256', 'sm4',
] as const;
const DEFAULT_ITER_TIME_MS = 2000;

/** An enum create option (`prefix` + `name`), checked as QEMU's QAPI conversion does; its text names it without the prefix. */
export function enumCreateOption<T extends string>(
  options: Record<string, unknown>, prefix: string, name: string, values: readonly T[], fallback: T,
): T {
  const value = options[`${prefix}${name}`];
  if (value === undefined) return fallback;
  if (!(values as readonly unknown[]).includes(value)) throw invalid(`Parameter '${name}' does not accept value '${String(value)}'`);
  return value as T;
}

/** The LUKS options of a new volume from create options named `prefix` + QEMU's names (`encrypt.` for qcow2). */
export function luksCreateOptions(options: Record<string, unknown>, prefix: string): LuksCreateOptions {
  const option = <T extends string>(name: string, values: readonly T[], fallback: T): T => enumCreateOption(options, prefix, name, values, fallback);
  return {
    cipherAlg: option('cipher-alg', CIPHER_ALGS, 'aes-256'),
    cipherMode: option('cipher-mode', CIPHER_MODES, 'xts'),
    ivgenAlg: option('ivgen-alg', IVGEN_ALGS, 'plain64'),
    ivgenHashAlg: options[`${prefix}ivgen-hash-alg`] === undefined ? undefined : option('ivgen-hash-alg', HASH_ALGS, 'sha256'),
    hashAlg: option('hash-alg', HASH_ALGS, 'sha256'),
    iterTime: (options[`${prefix}iter-time`] as number | undefined) ?? DEFAULT_ITER_TIME_MS,
  };
}

export interface LuksCreateOptions {
  cipherAlg: string;
  cipherMode: CipherMode;
  ivgenAlg: IvgenAlg;
  ivgenHashAlg?: string;
  hashAlg: string;
  /** Milliseconds PBKDF2 should take for the slot key (an eighth of it for the digest). */
  iterTime: number;
}

/**
 * Iterations of PBKDF2 with `hash` and `outBytes` of output that take `ms` milliseconds of CPU
 * here, as QEMU counts them: measured in CPU time (a busy machine does not make the key weaker),
 * doubling a short run until it takes long enough to time.
 */
function calibrateIterations(hash: string, outBytes: number, ms: number): number {
  const MEASURE_MS = 20;
  for (let probe = 1000; ; probe *= 2) {
    const start = process.cpuUsage();
    crypto().pbkdf2Sync('calibration', 'salt', probe, outBytes, hash);
    const used = process.cpuUsage(start);
    const elapsedMs = (used.user + used.system) / 1000;
    if (elapsedMs >= MEASURE_MS) return Math.floor((probe / elapsedMs) * ms);
  }
}

/** Master key bytes of a new volume: the algorithm's key size (by its QAPI name), twice for xts. */
function newKeyBytes(o: LuksCreateOptions): number {
  // LUKS has no name for QEMU's DES ciphers.
  if (o.cipherAlg === 'des' || o.cipherAlg === '3des') throw invalid(`Algorithm '${o.cipherAlg}' not supported`);
  const bits = /-(\d+)$/.exec(o.cipherAlg)?.[1];
  const algKeyBytes = bits ? Number(bits) / 8 : 16;
  return o.cipherMode === 'xts' ? algKeyBytes * 2 : algKeyBytes;
}

/** A new volume's layout in sectors: a 4 KiB header, then each slot's key material in whole 4 KiB. */
function newLayout(keyBytes: number): { headerSectors: number; splitSectors: number; payloadSectors: number } {
  const headerSectors = ALIGN_BYTES / SECTOR_SIZE;
  const splitSectors = keyMaterialSectors(keyBytes, STRIPES);
  return { headerSectors, splitSectors, payloadSectors: headerSectors + SLOT_COUNT * splitSectors };
}

/** Bytes of the header and key material a new volume made with `o` takes (qemu-img measure). */
export function luksPayloadBytes(o: LuksCreateOptions): number {
  return newLayout(newKeyBytes(o)).payloadSectors * SECTOR_SIZE;
}

/**
 * A new LUKS volume with `password` in slot 0: the header and the whole key area (header,
 * slot 0's encrypted split key, the other slots' areas zeroed), `payloadOffset` bytes long.
 */
export async function createLuks(o: LuksCreateOptions, password: Uint8Array): Promise<{ header: LuksHeader; area: Uint8Array; masterKey: Uint8Array }> {
  checkHash(o.hashAlg);
  const keyBytes = newKeyBytes(o);
  const cipherName = o.cipherAlg.replace(/-\d+$/, '');
  const ivgen = o.ivgenAlg === 'essiv' ? `essiv:${o.ivgenHashAlg ?? 'sha256'}` : o.ivgenAlg;
  const { headerSectors, splitSectors, payloadSectors } = newLayout(keyBytes);
  const masterKey = crypto().randomBytes(keyBytes);
  const header: LuksHeader = {
    cipherName, cipherMode: `${o.cipherMode}-${ivgen}`, hashSpec: o.hashAlg,
    payloadOffset: payloadSectors, keyBytes,
    mkDigest: new Uint8Array(DIGEST_BYTES), mkDigestSalt: crypto().randomBytes(SALT_BYTES), mkDigestIterations: 0,
    uuid: crypto().randomUUID(),
    slots: Array.from({ length: SLOT_COUNT }, (_, i) => ({
      active: false, iterations: 0, salt: new Uint8Array(SALT_BYTES), keyOffset: headerSectors + i * splitSectors, stripes: STRIPES,
    })),
  };
  const cipherSpec = luksCipherSpec(header);
  // As QEMU (and cryptsetup): an eighth of the time for the digest.
  header.mkDigestIterations = Math.max(Math.floor(calibrateIterations(o.hashAlg, DIGEST_BYTES, o.iterTime) / 8), MIN_DIGEST_ITERATIONS);
  header.mkDigest = await pbkdf2(masterKey, header.mkDigestSalt, header.mkDigestIterations, DIGEST_BYTES, o.hashAlg);
  const material = await storeKey(header, cipherSpec, 0, masterKey, password, calibrateIterations(o.hashAlg, keyBytes, o.iterTime));
  const area = new Uint8Array(header.payloadOffset * SECTOR_SIZE);
  area.set(buildLuksHeader(header));
  area.set(material, header.slots[0]!.keyOffset * SECTOR_SIZE);
  return { header, area, masterKey };
}

/** Activate slot `index` for `password`: new salt and iterations; returns its encrypted key material. */
async function storeKey(
  h: LuksHeader, cipherSpec: SectorCipherSpec, index: number, masterKey: Uint8Array, password: Uint8Array, iterations: number,
): Promise<Uint8Array> {
  const slot = h.slots[index]!;
  slot.active = true;
  slot.iterations = Math.max(iterations, MIN_SLOT_ITERATIONS);
  slot.salt = crypto().randomBytes(SALT_BYTES);
  const slotKey = await pbkdf2(password, slot.salt, slot.iterations, h.keyBytes, h.hashSpec);
  const material = afSplit(masterKey, slot.stripes, h.hashSpec);
  new SectorCipher(cipherSpec, slotKey).encrypt(material, 0);
  return material;
}

/** What `qemu-img amend -o encrypt.*` asks of a LUKS volume (QCryptoBlockAmendOptionsLUKS). */
export interface LuksAmendment {
  state: 'active' | 'inactive';
  keyslot?: number;
  oldPassword?: Uint8Array;
  newPassword?: Uint8Array;
  iterTime: number;
}

/** The cipher choices of a new LUKS volume, in QEMU's order (qcow2 names them with `encrypt.` before). */
export const LUKS_CIPHER_CREATE_OPTIONS: readonly CreateOptionSpec[] = [
  { name: 'cipher-alg', type: 'string', help: 'Name of encryption cipher algorithm' },
  { name: 'cipher-mode', type: 'string', help: 'Name of encryption cipher mode' },
  { name: 'ivgen-alg', type: 'string', help: 'Name of IV generator algorithm' },
  { name: 'ivgen-hash-alg', type: 'string', help: 'Name of IV generator hash algorithm' },
  { name: 'hash-alg', type: 'string', help: 'Name of encryption hash algorithm' },
  { name: 'iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
];

/** The amend options of a LUKS volume, in QEMU's order (qcow2 names them with `encrypt.` before). */
export const LUKS_AMEND_OPTIONS: readonly CreateOptionSpec[] = [
  { name: 'keyslot', type: 'number', help: 'Select a single keyslot to modify explicitly' },
  { name: 'state', type: 'string', help: 'Select new state of affected keyslots (active/inactive)' },
  { name: 'old-secret', type: 'string', help: 'Select all keyslots that match this password' },
  { name: 'new-secret', type: 'string', help: 'New secret to set in the matching keyslots. Empty string to erase' },
  { name: 'iter-time', type: 'number', help: 'Time to spend in PBKDF in milliseconds' },
];

/**
 * The amendment amend options named `prefix` + QEMU's names ask for, checked as QEMU's QAPI
 * conversion does; `password` gives the bytes of the secret a name refers to.
 */
export function luksAmendment(options: Record<string, unknown>, prefix: string, password: (id: string) => Uint8Array): LuksAmendment {
  const state = options[`${prefix}state`];
  if (state === undefined) throw invalid("Parameter 'state' is missing");
  if (state !== 'active' && state !== 'inactive') throw invalid(`Parameter 'state' does not accept value '${String(state)}'`);
  const secret = (name: string): Uint8Array | undefined => {
    const id = options[`${prefix}${name}`];
    return id === undefined ? undefined : password(String(id));
  };
  return {
    state, keyslot: options[`${prefix}keyslot`] as number | undefined, oldPassword: secret('old-secret'), newPassword: secret('new-secret'),
    iterTime: (options[`${prefix}iter-time`] as number | undefined) ?? DEFAULT_ITER_TIME_MS,
  };
}

/**
 * Add or erase key slots as QEMU's amend does, with its checks and texts. `write` stores bytes
 * at an offset from the header start; the header (changed in place) is written last.
 */
export async function amendLuks(
  h: LuksHeader, cipherSpec: SectorCipherSpec, masterKey: Uint8Array, a: LuksAmendment, force: boolean,
  readAt: (offset: number, bytes: number) => Promise<Uint8Array>, write: (offset: number, data: Uint8Array) => Promise<void>,
): Promise<void> {
  if (a.keyslot !== undefined && (a.keyslot < 0 || a.keyslot >= SLOT_COUNT)) {
    throw invalid(`Invalid keyslot ${a.keyslot} specified, must be between 0 and ${SLOT_COUNT - 1}`);
  }
  if (a.state === 'active') {
    if (a.oldPassword) throw invalid("'old-secret' must not be given when activating keyslots");
    if (!a.newPassword) throw invalid("'new-secret' is required to activate a keyslot");
    const index = a.keyslot ?? h.slots.findIndex((slot) => !slot.active);
    if (index < 0) throw invalid("Can't add a keyslot - all keyslots are in use");
    if (h.slots[index]!.active && !force) throw invalid(`Refusing to overwrite active keyslot ${index} - please erase it first`);
    const iterations = calibrateIterations(h.hashSpec, h.keyBytes, a.iterTime);
    const material = await storeKey(h, cipherSpec, index, masterKey, a.newPassword, iterations);
    await write(h.slots[index]!.keyOffset * SECTOR_SIZE, material);
  } else {
    if (a.newPassword) throw invalid("'new-secret' must not be given when erasing keyslots");
    const erase = await slotsToErase(h, cipherSpec, a, readAt);
    const active = h.slots.filter((slot) => slot.active).length;
    if (erase.length === active && !force) {
      throw invalid(a.keyslot !== undefined
        ? `Attempt to erase the only active keyslot ${a.keyslot} which will erase all the data in the image irreversibly - refusing operation`
        : 'All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation');
    }
    for (const index of erase) {
      const slot = h.slots[index]!;
      // The old key material becomes noise, so the slot's password opens nothing any more.
      await write(slot.keyOffset * SECTOR_SIZE, crypto().randomBytes(splitKeyBytes(h, slot)));
      Object.assign(slot, { active: false, iterations: 0, salt: new Uint8Array(SALT_BYTES) });
    }
  }
  await write(0, buildLuksHeader(h));
}

/** The slots an erase names: the given one, or every active one the old password opens. */
async function slotsToErase(
  h: LuksHeader, cipherSpec: SectorCipherSpec, a: LuksAmendment, readAt: (offset: number, bytes: number) => Promise<Uint8Array>,
): Promise<number[]> {
  if (a.keyslot !== undefined) {
    const slot = h.slots[a.keyslot]!;
    if (!slot.active) throw invalid(`Given keyslot ${a.keyslot} is already erased (inactive) `);
    if (a.oldPassword && !(await openSlot(h, cipherSpec, slot, a.oldPassword, readAt))) {
      throw invalid(`Given keyslot ${a.keyslot} doesn't contain the given old password for erase operation`);
    }
    return [a.keyslot];
  }
  if (!a.oldPassword) {
    throw invalid('To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given');
  }
  const matching: number[] = [];
  for (const [index, slot] of h.slots.entries()) {
    if (slot.active && (await openSlot(h, cipherSpec, slot, a.oldPassword, readAt))) matching.push(index);
  }
  if (!matching.length) throw invalid('No keyslots match given (old) password for erase operation');
  return matching;
}
