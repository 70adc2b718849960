import { describe, expect, it } from 'vitest';
import {
  encodeSnapshot, NO_ICOUNT, parseSnapshotTable, snapshotTableSize, type Snapshot,
} from '../../../../src/drivers/qcow2/snapshots.js';
import { BlkioError } from '../../../../src/errors.js';

function snapshot(over: Partial<Snapshot> = {}): Snapshot {
  return {
    l1TableOffset: 0x40000, l1Size: 1, id: '1', name: 'first', dateSec: 1700000000, dateNsec: 123000,
    vmClockNsec: 3723004000000n, vmStateSize: 0n, diskSize: 1048576n, icount: 0n, extraDataSize: 24,
    unknownExtraData: new Uint8Array(0), ...over,
  };
}

/** A table laid out as the writer lays it: entries 8-byte aligned, padding zero. */
function table(entries: Snapshot[]): Uint8Array {
  const buf = new Uint8Array(snapshotTableSize(entries) + 64);
  let offset = 0;
  for (const sn of entries) {
    offset = Math.ceil(offset / 8) * 8;
    const e = encodeSnapshot(sn);
    buf.set(e, offset);
    offset += e.length;
  }
  return buf;
}

function reader(buf: Uint8Array) {
  return async (offset: number, bytes: number) => {
    const out = new Uint8Array(bytes);
    out.set(buf.subarray(offset, offset + bytes));
    return out;
  };
}

describe('qcow2 snapshot table', () => {
  it('round-trips entries, aligning each to 8 bytes', async () => {
    const entries = [snapshot(), snapshot({ id: '2', name: 'second one', icount: 77n, vmStateSize: 2n ** 33n })];
    const buf = table(entries);
    expect(snapshotTableSize(entries)).toBe(Math.ceil((40 + 24 + 6) / 8) * 8 + 40 + 24 + 11);
    const parsed = await parseSnapshotTable(reader(buf), 0, 2, 999);
    expect(parsed.snapshots).toEqual(entries);
    expect(parsed.size).toBe(snapshotTableSize(entries));
  });

  it('writes a VM state beyond 32 bits only in the extra data', () => {
    const view = new DataView(encodeSnapshot(snapshot({ vmStateSize: 2n ** 32n })).buffer);
    expect(view.getUint32(32)).toBe(0);
    expect(view.getBigUint64(40)).toBe(2n ** 32n);
  });

  it('fills in what short extra data lacks: 32-bit VM state, the image size, no icount', async () => {
    const buf = table([snapshot()]);
    const view = new DataView(buf.buffer);
    view.setUint32(32, 4096);
    view.setUint32(36, 0);
    buf.set(Buffer.from('1first'), 40);
    const [sn] = (await parseSnapshotTable(reader(buf), 0, 1, 5 * 2 ** 20)).snapshots;
    expect(sn).toMatchObject({ id: '1', name: 'first', vmStateSize: 4096n, diskSize: 5n * 2n ** 20n, icount: NO_ICOUNT, extraDataSize: 0 });
  });

  it('keeps unknown extra data for rewriting', async () => {
    const sn = snapshot({ extraDataSize: 32, unknownExtraData: Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]) });
    const encoded = encodeSnapshot(sn);
    expect(new DataView(encoded.buffer).getUint32(36)).toBe(32);
    const parsed = await parseSnapshotTable(reader(table([sn])), 0, 1, 0);
    expect(parsed.snapshots[0]).toEqual(sn);
  });

  it('cuts names at the first NUL, as C strings are', async () => {
    const buf = table([snapshot({ name: 'ab\0cd' })]);
    const [sn] = (await parseSnapshotTable(reader(buf), 0, 1, 0)).snapshots;
    expect(sn.name).toBe('ab');
  });

  it('refuses too much extra data with QEMU\'s text and hint', async () => {
    const buf = table([snapshot(), snapshot()]);
    new DataView(buf.buffer).setUint32(Math.ceil(70 / 8) * 8 + 36, 1025);
    const err = await parseSnapshotTable(reader(buf), 0, 2, 0).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlkioError);
    expect((err as BlkioError).code).toBe('EFBIG');
    expect((err as BlkioError).message).toBe('Too much extra metadata in snapshot table entry 1');
    expect((err as BlkioError).hints).toEqual(['You can force-remove this extra metadata with qemu-img check -r all']);
  });
});
