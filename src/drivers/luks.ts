/**
 * `luks`: a LUKS1 volume as a format (QEMU's block/crypto.c): the header and key slots at the
 * start of the file, then the encrypted guest data, each 512-byte sector numbered from the
 * start of the payload. The header code is shared with qcow2's encryption (src/crypto/).
 * Opened without I/O (qemu-img info), the volume is described without its key.
 */
import { BlkioError } from '../errors.js';
import { ROLE_IMAGE, type BlockDriver, type CreateRequest } from '../block/driver.js';
import type { BdrvChild } from '../block/child.js';
import { REQ_FUA, STATUS_DATA } from '../block/flags.js';
import { supportedWriteFlags } from '../block/io.js';
import { limitsFrom } from '../block/node.js';
import { secretData } from '../block/secret.js';
import {
  amendLuks, createLuks, isLuksVolume, LUKS_AMEND_OPTIONS, LUKS_CIPHER_CREATE_OPTIONS, LUKS_HEADER_BYTES, luksAmendment, luksCipherSpec, luksCreateOptions, luksInfo,
  luksPayloadBytes, parseLuksHeader, unlockLuks, type LuksHeader,
} from '../crypto/luks.js';
import { SECTOR_SIZE, SectorCipher, type SectorCipherSpec } from '../crypto/sector-cipher.js';
import { checkPreallocationOption } from './raw.js';
import { fileAllocatedSize, readBytes } from './format-helpers.js';

interface LuksState {
  file: BdrvChild;
  header: LuksHeader;
  cipherSpec: SectorCipherSpec;
  /** Bytes of header and key material before the guest data. */
  payloadOffset: number;
  /** Absent when opened without I/O. */
  unlocked?: { cipher: SectorCipher; masterKey: Uint8Array };
}

function keySecret(id: unknown, lookupObject: (id: string) => unknown): Uint8Array {
  if (id === undefined) throw new BlkioError('EINVAL', "Parameter 'key-secret' is required for cipher");
  return secretData(lookupObject, String(id));
}

/** The create options checked as QEMU's QAPI conversion does, before any file is touched. */
function createSettings(options: CreateRequest['options']): ReturnType<typeof luksCreateOptions> & { keySecret: unknown } {
  const luks = luksCreateOptions(options, '');
  checkPreallocationOption(options);
  return { ...luks, keySecret: options['key-secret'] };
}

export const luksDriver: BlockDriver<LuksState> = {
  name: 'luks',
  kind: 'format',
  options: { 'key-secret': { type: 'string' } },

  probe: (header) => (isLuksVolume(header) ? 100 : 0),

  async open(_node, ctx) {
    const file = (await ctx.openChild('file', ROLE_IMAGE))!;
    const lookupObject = (id: string): unknown => ctx.layer.objects.get(id);
    const withoutIo = ctx.withoutIo;
    const password = withoutIo ? undefined : keySecret(ctx.opts['key-secret'], lookupObject);
    const header = parseLuksHeader(await readBytes(file, 0, LUKS_HEADER_BYTES));
    const cipherSpec = luksCipherSpec(header);
    const payloadOffset = header.payloadOffset * SECTOR_SIZE;
    if (file.getLength() < payloadOffset) throw new BlkioError('EIO', 'Could not refresh total sector count: Input/output error');
    if (!password) return { file, header, cipherSpec, payloadOffset };
    const masterKey = await unlockLuks(header, cipherSpec, password, (at, bytes) => readBytes(file, at, bytes));
    return { file, header, cipherSpec, payloadOffset, unlocked: { cipher: new SectorCipher(cipherSpec, masterKey), masterKey } };
  },

  refreshLimits(node) {
    node.limits = { ...limitsFrom(node.state.file.node), requestAlignment: SECTOR_SIZE };
  },

  supportedWriteFlags: (node) => supportedWriteFlags(node.state.file.node) & REQ_FUA,

  getLength: (node) => node.state.file.getLength() - node.state.payloadOffset,

  async read(node, offset, bytes, buf, flags) {
    const s = node.state;
    await s.file.read(s.payloadOffset + offset, bytes, buf, flags);
    s.unlocked!.cipher.decrypt(buf.subarray(0, bytes), offset / SECTOR_SIZE);
  },

  async write(node, offset, bytes, buf, flags) {
    const s = node.state;
    const encrypted = Uint8Array.from(buf.subarray(0, bytes));
    s.unlocked!.cipher.encrypt(encrypted, offset / SECTOR_SIZE);
    await s.file.write(s.payloadOffset + offset, bytes, encrypted, flags);
  },

  // All data, at no offset a reader of the file could use.
  blockStatusNow: (_node, _offset, bytes) => ({ status: STATUS_DATA, pnum: bytes }),

  // Zeroes the file grows by read back as noise through the cipher: no REQ_ZERO_WRITE here.
  truncate: (node, size, exact, prealloc) => node.state.file.truncate(node.state.payloadOffset + size, exact, prealloc),

  allocatedSize: (node) => fileAllocatedSize(node.state.file),

  getInfo: () => ({ encrypted: true }),

  formatSpecific(node) {
    const { format: _format, ...info } = luksInfo(node.state.header, node.state.cipherSpec);
    return { type: 'luks', json: info };
  },

  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'key-secret', type: 'string', help: 'ID of the secret that provides the keyslot passphrase' },
    ...LUKS_CIPHER_CREATE_OPTIONS,
  ],
  removesFailedImage: true,
  takesProtocolCreateOptions: ['preallocation'],

  checkCreateOptions(request) {
    createSettings(request.options);
  },

  /** The header and slot 0's key material are written; the other slots' areas stay holes, as in QEMU's images. */
  async create(file, request) {
    const settings = createSettings(request.options);
    const password = keySecret(settings.keySecret, (id) => file.node.layer.objects.get(id));
    const { header, area } = await createLuks(settings, password);
    const firstSlot = header.slots[0]!;
    const written = firstSlot.keyOffset * SECTOR_SIZE + header.keyBytes * firstSlot.stripes;
    // QEMU's LUKS creation takes metadata preallocation for none: the header is all its metadata.
    const prealloc = String(request.options.preallocation ?? 'off');
    await file.truncate(area.length + request.size, true, prealloc === 'metadata' ? 'off' : prealloc);
    await file.write(0, written, area.subarray(0, written));
  },

  amendOptions: LUKS_AMEND_OPTIONS,

  /** Add or erase key slots: the key material, then the header, written in place. */
  async amend(node, options, force) {
    const s = node.state;
    const amendment = luksAmendment(options, '', (id) => secretData((name) => node.layer.objects.get(name), id));
    await amendLuks(s.header, s.cipherSpec, s.unlocked!.masterKey, amendment, force, (at, bytes) => readBytes(s.file, at, bytes),
      (at, data) => s.file.write(at, data.length, data));
  },

  async measure(options, source, lookupObject) {
    const settings = createSettings(options);
    keySecret(settings.keySecret, lookupObject);
    const required = luksPayloadBytes(settings) + (source ? source.node.getLength() : Number(options.size ?? 0));
    return { required, fullyAllocated: required };
  },
};
