/**
 * `qemu-img measure -O qcow2`: the file size a new image needs, fully allocated and for the data
 * a source image holds (metadata is always counted for the full virtual size), plus room for the
 * source's persistent bitmaps. The option checks and their texts are measure's own (they differ
 * from create's).
 */
import { BlkioError } from '../../errors.js';
import { roundUp } from '../../arithmetic.js';
import type { CreateRequest, MeasureResult, MeasureSource, PersistentBitmap } from '../../block/driver.js';
import { STATUS_ALLOCATED, STATUS_DATA, STATUS_ZERO } from '../../block/flags.js';
import { checkClusterSize, checkRefcountWidth } from './create.js';
import { MAX_L1_SIZE } from './mapping.js';
import { refcountMetadataSize } from './refcount.js';
import { BITMAP_DIR_ENTRY_SIZE, readBitmapDirectory } from './bitmaps.js';
import { encryptionCreateSettings, encryptionKeySecret } from './encryption.js';
import { luksPayloadBytes } from '../../crypto/luks.js';
import { secretData } from '../../block/secret.js';
import type { Qcow2State } from './state.js';

const DEFAULT_CLUSTER_SIZE = 65536;
const L1_ENTRY_SIZE = 8;
const BITMAP_TABLE_ENTRY_SIZE = 8;

/**
 * Header, L1 and L2 tables for every guest cluster, refcount structures for all of it, and the
 * data clusters themselves: the file size of a fully allocated image.
 */
export function fullyAllocatedSize(virtualSize: number, clusterSize: number, refcountOrder: number, extendedL2: boolean): number {
  const alignedSize = roundUp(virtualSize, clusterSize);
  const l2EntrySize = extendedL2 ? 16 : 8;
  const l2Entries = roundUp(alignedSize / clusterSize, clusterSize / l2EntrySize);
  const l1Entries = roundUp((l2Entries * l2EntrySize) / clusterSize, clusterSize / L1_ENTRY_SIZE);
  let metadata = clusterSize + l2Entries * l2EntrySize + l1Entries * L1_ENTRY_SIZE;
  metadata += refcountMetadataSize((metadata + alignedSize) / clusterSize, clusterSize, refcountOrder, false).bytes;
  return metadata + alignedSize;
}

interface MeasureSettings {
  clusterSize: number;
  extendedL2: boolean;
  version: number;
  refcountOrder: number;
  preallocation: string;
  hasBackingFile: boolean;
  luksBytes: number;
}

const MEASURE_VERSIONS: Record<string, number> = { '0.10': 2, '1.1': 3 };
const PREALLOC_MODES = ['off', 'metadata', 'falloc', 'full'];

/** The options that change the figures, checked in QEMU's order with its texts. */
function measureSettings(o: CreateRequest['options'], lookupObject: (id: string) => unknown): MeasureSettings {
  const extendedL2 = (o.extended_l2 as boolean | undefined) ?? false;
  const clusterSize = (o.cluster_size as number | undefined) ?? DEFAULT_CLUSTER_SIZE;
  checkClusterSize(clusterSize, extendedL2);
  const compat = o.compat as string | undefined;
  if (compat !== undefined && !(compat in MEASURE_VERSIONS)) {
    throw new BlkioError('EINVAL', `Invalid compatibility level: '${compat}'`);
  }
  const version = compat === undefined ? 3 : MEASURE_VERSIONS[compat];
  const refcountBits = (o.refcount_bits as number | undefined) ?? 16;
  checkRefcountWidth(refcountBits);
  if (version < 3 && refcountBits !== 16) {
    throw new BlkioError('EINVAL', 'Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  const preallocation = (o.preallocation as string | undefined) ?? 'off';
  if (!PREALLOC_MODES.includes(preallocation)) throw new BlkioError('EINVAL', `invalid parameter value: ${preallocation}`);
  // The LUKS header and key material take clusters of their own (AES images need none).
  let luksBytes = 0;
  const encryption = o['encrypt.format'] === 'luks' ? encryptionCreateSettings(o) : undefined;
  if (encryption?.format === 'luks') {
    secretData(lookupObject, encryptionKeySecret(encryption));
    luksBytes = roundUp(luksPayloadBytes(encryption.luks), clusterSize);
  }
  return {
    clusterSize, extendedL2, version, refcountOrder: Math.log2(refcountBits), preallocation,
    hasBackingFile: o.backing_file !== undefined, luksBytes,
  };
}

/** Bytes of the source's clusters that hold data (zero and unallocated ranges need none). */
async function dataBytes(source: MeasureSource, clusterSize: number): Promise<number> {
  const length = source.node.getLength();
  let required = 0;
  for (let offset = 0, pnum = 0; offset < length; offset += pnum) {
    const r = await source.chainStatus(offset, length - offset);
    pnum = r.pnum;
    if (r.status & STATUS_ZERO) continue;
    if ((r.status & (STATUS_DATA | STATUS_ALLOCATED)) === (STATUS_DATA | STATUS_ALLOCATED)) {
      // Count whole clusters; the next query starts behind this one's last cluster.
      pnum = roundUp(offset + pnum, clusterSize) - offset;
      required += (offset % clusterSize) + pnum;
    }
  }
  return required;
}

/** Clusters each bitmap, its table and the directory take when copied into the new image. */
function bitmapsSize(bitmaps: readonly PersistentBitmap[], virtualSize: number, clusterSize: number): number {
  let size = 0;
  let directorySize = 0;
  for (const bitmap of bitmaps) {
    const bytes = Math.ceil(Math.ceil(virtualSize / bitmap.granularity) / 8);
    const clusters = Math.ceil(bytes / clusterSize);
    size += clusters * clusterSize + roundUp(clusters * BITMAP_TABLE_ENTRY_SIZE, clusterSize);
    directorySize += roundUp(BITMAP_DIR_ENTRY_SIZE + new TextEncoder().encode(bitmap.name).length, 8);
  }
  return size + roundUp(directorySize, clusterSize);
}

export async function measureImage(
  options: CreateRequest['options'], source: MeasureSource | undefined, lookupObject: (id: string) => unknown = () => undefined,
): Promise<MeasureResult> {
  const c = measureSettings(options, lookupObject);
  let virtualSize = roundUp((options.size as number | undefined) ?? 0, c.clusterSize);
  const l2Tables = Math.ceil(virtualSize / c.clusterSize / (c.clusterSize / (c.extendedL2 ? 16 : 8)));
  if (l2Tables * L1_ENTRY_SIZE > MAX_L1_SIZE) {
    throw new BlkioError('EFBIG', 'The image size is too large (try using a larger cluster size)');
  }
  let required = 0;
  if (source) {
    virtualSize = roundUp(source.node.getLength(), c.clusterSize);
    // The new image's backing file may share nothing with the source: count every cluster.
    required = c.hasBackingFile ? virtualSize : await dataBytes(source, c.clusterSize);
  }
  if (c.preallocation === 'full' || c.preallocation === 'falloc') required = virtualSize;
  const fullyAllocated = fullyAllocatedSize(virtualSize, c.clusterSize, c.refcountOrder, c.extendedL2) + c.luksBytes;
  const result: MeasureResult = { required: fullyAllocated - virtualSize + required, fullyAllocated };
  if (source && c.version >= 3) {
    const bitmaps = await source.node.driver.persistentBitmaps?.(source.node);
    if (bitmaps) result.bitmaps = bitmapsSize(bitmaps, source.node.getLength(), c.clusterSize);
  }
  return result;
}

/** The bitmaps listed in the image's bitmap directory (v3 images only; v2 cannot hold any). */
export async function listPersistentBitmaps(s: Qcow2State): Promise<PersistentBitmap[] | undefined> {
  if (s.header.version < 3) return undefined;
  return (await readBitmapDirectory(s)).map((e) => ({ name: e.name, granularity: 2 ** e.granularityBits }));
}
