/**
 * QEMU's metadata overlap check (its default "cached" mode): before guest data or metadata goes
 * to a host range, the range must not touch the image's other metadata. A corrupt table entry
 * that points into metadata would otherwise spread the damage.
 */
import { l1EntryOffset } from './mapping.js';
import { reftableOffset } from './entries.js';
import { AUTOCLEAR_BITMAPS } from './header.js';
import { signalCorruption, type Qcow2State } from './state.js';

export type Metadata = 'active L1 table' | 'active L2 table' | 'refcount block' | 'bitmap directory';

/**
 * The first kind of metadata the cluster-aligned host range overlaps, in QEMU's check order
 * (`own`: the kind being written, not checked).
 */
export function overlappingMetadata(s: Qcow2State, offset: number, bytes: number, own?: Metadata): string | undefined {
  const start = Math.floor(offset / s.clusterSize) * s.clusterSize;
  const end = Math.ceil((offset + bytes) / s.clusterSize) * s.clusterSize;
  const overlaps = (at: number, size: number): boolean => size > 0 && at < end && start < at + size;
  if (start < s.clusterSize) return 'qcow2_header';
  if (own !== 'active L1 table' && overlaps(s.l1TableOffset, s.l1Size * 8)) return 'active L1 table';
  for (let i = 0; own !== 'active L2 table' && i < s.l1Size; i++) {
    const l2 = l1EntryOffset(s, i);
    if (l2 && overlaps(l2, s.clusterSize)) return 'active L2 table';
  }
  if (overlaps(s.refcountTableOffset, s.refcountTableSize * 8)) return 'refcount table';
  // Entries past the last used one are empty: a cluster-sized table has 8192 of them, and
  // every data write comes here.
  const lastBlock = Math.min(s.maxRefcountTableIndex, s.refcountTableSize - 1);
  for (let i = 0; own !== 'refcount block' && i <= lastBlock; i++) {
    const block = reftableOffset(s.refcountTable, i);
    if (block && overlaps(block, s.clusterSize)) return 'refcount block';
  }
  if (overlaps(s.header.snapshotsOffset, s.snapshotsSize)) return 'snapshot table';
  if (s.snapshots.some((sn) => overlaps(sn.l1TableOffset, sn.l1Size * 8))) return 'inactive L1 table';
  if (own !== 'bitmap directory' && s.header.autoclearFeatures & AUTOCLEAR_BITMAPS) {
    // QEMU checks the directory whenever the bit is set, also with no extension read (offset
    // and size 0): its unsigned range test then takes the empty range for all of the file.
    const dir = s.bitmapDirectory ?? { offset: 0, size: 0 };
    const last = dir.size === 0 && dir.offset === 0 ? Infinity : dir.offset + dir.size - 1;
    if (start <= last && dir.offset < end) return 'bitmap directory';
  }
  return undefined;
}

/** Refuses (marking the image corrupt, as QEMU does) a data or table write into other metadata. */
export async function preventMetadataOverwrite(s: Qcow2State, offset: number, bytes: number, own?: Metadata): Promise<void> {
  if (bytes === 0) return;
  const what = overlappingMetadata(s, offset, bytes, own);
  if (what) throw await signalCorruption(s, true, `Preventing invalid write on metadata (overlaps with ${what})`);
}
