import { describe, expect, it } from 'vitest';
import { probeDirectAlignment } from '../../../src/drivers/file-direct.js';
import { BlkioError } from '../../../src/errors.js';

/**
 * A kernel taking reads whose length and buffer page offset are multiples of the given sizes.
 * The probe's first read starts its page-aligned buffer: offsets are counted from there.
 */
function kernel(lengthAlign: number, bufferAlign: number, tried: string[] = []) {
  let pageStart: number | undefined;
  return async (buf: Uint8Array) => {
    pageStart ??= buf.byteOffset;
    const pageOffset = buf.byteOffset - pageStart;
    tried.push(`${buf.length}+${pageOffset}`);
    return buf.length % lengthAlign === 0 && pageOffset % bufferAlign === 0;
  };
}

describe('probeDirectAlignment', () => {
  it('takes the smallest length and buffer offset the kernel accepts, as QEMU', async () => {
    const tried: string[] = [];
    expect(await probeDirectAlignment(kernel(512, 512, tried))).toEqual({ request: 512, buffer: 512 });
    expect(tried).toEqual(['1+0', '512+0', '4096+1', '4096+512']);
  });

  it('finds larger sector sizes', async () => {
    expect(await probeDirectAlignment(kernel(4096, 2048))).toEqual({ request: 4096, buffer: 2048 });
  });

  it('assumes 4096 when even a byte reads (a hole at offset 0), and the same for buffers', async () => {
    const tried: string[] = [];
    expect(await probeDirectAlignment(kernel(1, 1, tried))).toEqual({ request: 4096, buffer: 4096 });
    expect(tried).toEqual(['1+0', '4096+1']);
  });

  it("fails with QEMU's text and hint when nothing works", async () => {
    const err = await probeDirectAlignment(async () => false).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlkioError);
    expect((err as BlkioError).message).toBe('Could not find working O_DIRECT alignment');
    expect((err as BlkioError).hints).toEqual(['Try cache.direct=off']);
  });
});
