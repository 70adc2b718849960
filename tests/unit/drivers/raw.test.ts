import { mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_RESIZE, PERM_WRITE } from '../../../src/block/permissions.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { rawDriver } from '../../../src/drivers/raw.js';

const dir = mkdtempSync(join(tmpdir(), 'blkio-raw-'));
const image = join(dir, 'disk.raw');
afterAll(() => rmSync(dir, { recursive: true, force: true }));
beforeEach(() => writeFileSync(image, Buffer.alloc(65536)));

async function openRaw(extra: Record<string, string>) {
  const layer = new BlockLayer(allDrivers);
  return layer.openNode(undefined, { driver: 'raw', 'file.filename': image, 'file.locking': 'off', ...extra });
}

describe('raw offset and size', () => {
  it('reports values beyond 2^53 exactly', async () => {
    await expect(openRaw({ size: '18446744073709551615' })).rejects.toThrow(
      'The sum of offset (0) and size (18446744073709551615) has to be smaller or equal to the  actual size of the containing file (65536)');
    await expect(openRaw({ offset: '1E' })).rejects.toThrow(
      'Offset (1152921504606846976) cannot be greater than size of the containing file (65536)');
  });

  it('resizes a window with an offset but no size, keeping the offset', async () => {
    const node = await openRaw({ offset: '512' });
    const backend = BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL);
    await backend.truncate(131072, false, 'off');
    expect(statSync(image).size).toBe(131072 + 512);
    expect(node.getLength()).toBe(131072);
  });

  it('refuses a size that the offset would push past int64', async () => {
    truncateSync(image, 3 * 2 ** 30);
    const node = await openRaw({ offset: String(2 ** 31) });
    const backend = BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL);
    await expect(backend.truncate(2 ** 63 - 2 ** 30, false, 'off')).rejects.toThrow('Disk size too large for the chosen offset');
  });

  it('refuses to resize a window of fixed size', async () => {
    const node = await openRaw({ offset: '512', size: '1024' });
    const backend = BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, PERM_ALL);
    await expect(backend.truncate(4096, false, 'off')).rejects.toThrow('Cannot resize fixed-size raw disks');
  });

  it('changes the window on reopen, checked as at open', async () => {
    const node = (await openRaw({ offset: '512', size: '1024' })) as Parameters<NonNullable<typeof rawDriver.prepareReopen>>[0];
    expect(() => rawDriver.prepareReopen!(node, { offset: 70000n, size: undefined }))
      .toThrow('Offset (70000) cannot be greater than size of the containing file (65536)');
    expect(() => rawDriver.prepareReopen!(node, { offset: 0n, size: 1000n })).toThrow('Specified size is not multiple of 512');
    await rawDriver.prepareReopen!(node, { offset: 0n, size: 4096n })();
    expect(node.getLength()).toBe(4096);
  });
});

