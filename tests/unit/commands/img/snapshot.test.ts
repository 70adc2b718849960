import { describe, expect, it } from 'vitest';
import { formatSnapshotList, parseSnapshotParam, type SnapshotInfoJson } from '../../../../src/commands/img/snapshot.js';
import { ReportLines } from '../../../../src/commands/img/common.js';

function row(over: Partial<SnapshotInfoJson>): string {
  const sn: SnapshotInfoJson = {
    id: '1', name: 'n', 'vm-state-size': 0n, 'date-sec': 0, 'date-nsec': 0, 'vm-clock-sec': 0n, 'vm-clock-nsec': 0n, ...over,
  };
  return formatSnapshotList([sn]).split('\n')[2];
}

describe('snapshot list table', () => {
  it('prints the VM clock as hh:mm:ss.mmm, hours growing past two digits', () => {
    expect(row({ 'vm-clock-sec': 3723n, 'vm-clock-nsec': 4999999n })).toContain(' 01:02:03.004');
    expect(row({ 'vm-clock-sec': 360000n })).toContain('100:00:00.000');
  });

  it('pads columns by bytes, as printf does', () => {
    // 'grüße' is 7 bytes: 9 spaces fill its 16-byte column; then the separator and VM SIZE, right-aligned.
    expect(row({ name: 'grüße' })).toMatch(/^1 {9}grüße {9} {6}0 B /);
    expect(row({ name: 'x'.repeat(20) })).toMatch(/^1 {9}x{20} +0 B/);
  });

  it('leaves ICOUNT empty when the snapshot has none', () => {
    expect(row({}).endsWith(' '.repeat(11))).toBe(true);
    expect(row({ icount: 42n }).endsWith('         42')).toBe(true);
  });
});

describe('snapshot parameter (-l)', () => {
  it('takes an ID or name, or snapshot.id/snapshot.name', () => {
    expect(parseSnapshotParam('first')).toEqual({ idOrName: 'first' });
    expect(parseSnapshotParam('snapshot.id=1,snapshot.name=a')).toEqual({ id: '1', name: 'a' });
    expect(parseSnapshotParam('snapshot.name=a,id=x')).toEqual({ name: 'a' });
  });

  it('reports unknown parameters with both of QEMU\'s lines', () => {
    let err: unknown;
    try {
      parseSnapshotParam('snapshot.bogus=1');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ReportLines);
    expect((err as ReportLines).lines).toEqual(["Invalid parameter 'snapshot.bogus'", "Failed in parsing snapshot param 'snapshot.bogus=1'"]);
  });
});
