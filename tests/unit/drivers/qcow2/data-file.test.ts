import { describe, expect, it } from 'vitest';
import {
  EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_FEATURE_TABLE, HEADER_SIZE_V3, INCOMPAT_DATA_FILE, buildHeaderCluster,
  parseExtensions, type Qcow2Header,
} from '../../../../src/drivers/qcow2/header.js';
import { ClusterType, clusterType } from '../../../../src/drivers/qcow2/mapping.js';
import { HI_COPIED, LO_ZERO } from '../../../../src/drivers/qcow2/entries.js';
import type { Qcow2State } from '../../../../src/drivers/qcow2/state.js';

const header: Qcow2Header = {
  version: 3, backingFileOffset: 0, backingFileSize: 0, clusterBits: 16, size: 2 ** 20, cryptMethod: 0,
  l1Size: 1, l1TableOffset: 0x30000, refcountTableOffset: 0x10000, refcountTableClusters: 1, nbSnapshots: 0,
  snapshotsOffset: 0, incompatibleFeatures: INCOMPAT_DATA_FILE, compatibleFeatures: 0n, autoclearFeatures: 0n,
  refcountOrder: 4, headerLength: HEADER_SIZE_V3, compressionType: 0,
};

function extensionOrder(cluster: Uint8Array): number[] {
  const view = new DataView(cluster.buffer);
  const order: number[] = [];
  for (let pos = HEADER_SIZE_V3; view.getUint32(pos) !== 0; pos += 8 + ((view.getUint32(pos + 4) + 7) & ~7)) {
    order.push(view.getUint32(pos));
  }
  return order;
}

describe('qcow2 external data file header extension', () => {
  it('follows the backing format and precedes the feature table, and parses back', () => {
    const cluster = buildHeaderCluster({
      header, clusterSize: 65536, unknownHeaderFields: new Uint8Array(0), backingFormat: 'raw', dataFile: 'x.raw',
      unknownExtensions: [],
    });
    expect(extensionOrder(cluster)).toEqual([EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_FEATURE_TABLE]);
    expect(parseExtensions(cluster, HEADER_SIZE_V3, 65536).dataFile).toBe('x.raw');
  });
});

describe('qcow2 cluster type of an entry with host offset 0', () => {
  const state = (features: bigint) => ({ extendedL2: false, header: { incompatibleFeatures: features } }) as Qcow2State;

  it('is data when COPIED is set and the data lives in an external data file', () => {
    expect(clusterType(state(INCOMPAT_DATA_FILE), { hi: HI_COPIED, lo: 0, zero: 0, alloc: 0 })).toBe(ClusterType.Normal);
    expect(clusterType(state(INCOMPAT_DATA_FILE), { hi: 0, lo: 0, zero: 0, alloc: 0 })).toBe(ClusterType.Unallocated);
    expect(clusterType(state(INCOMPAT_DATA_FILE), { hi: HI_COPIED, lo: LO_ZERO, zero: 0, alloc: 0 })).toBe(ClusterType.ZeroPlain);
  });

  it('is unallocated in an image without a data file', () => {
    expect(clusterType(state(0n), { hi: HI_COPIED, lo: 0, zero: 0, alloc: 0 })).toBe(ClusterType.Unallocated);
  });
});
