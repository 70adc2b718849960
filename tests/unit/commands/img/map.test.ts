import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mapEntryAt, mapEntryNow, type MapEntry } from '../../../../src/commands/img/map.js';
import { haveQemu, openQcow2, qemuImg, qemuIo, tempDir } from '../../drivers/qcow2/helpers.js';

describe.skipIf(!haveQemu)('img map: the walk without waiting', () => {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(() => tmp.remove());

  it('gives the entries the waiting walk gives, down a backing chain', async () => {
    const base = tmp.path('base.qcow2');
    const top = tmp.path('top.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', base, '4M');
    qemuIo(base, ['write -P 1 0 3M', 'write -z 3M 256k', 'write -c -P 2 3584k 128k']);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top, '6M');
    qemuIo(top, ['write -P 3 512k 64k', 'write -z 1M 64k', 'discard 3M 64k', 'write -P 4 5M 64k']);
    const img = await openQcow2(top, false);
    try {
      const length = img.node.getLength();
      expect(mapEntryNow(img.node, 0, length)).toBeUndefined();
      const expected: MapEntry[] = [];
      for (let offset = 0; offset < length; offset += expected[expected.length - 1].length) {
        expected.push(await mapEntryAt(img.node, offset, length - offset));
      }
      expect(new Set(expected.map((e) => e.depth))).toEqual(new Set([0, 1]));
      for (const e of expected) expect(mapEntryNow(img.node, e.start, length - e.start)).toEqual(e);
    } finally {
      await img.close();
    }
  });
});
