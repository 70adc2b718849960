import { describe, expect, it } from 'vitest';
import { BlockLayer } from '../../../src/block/graph.js';
import { blkdebugDriver } from '../../../src/drivers/blkdebug.js';
import { nullCoDriver } from '../../../src/drivers/null.js';
import { quorumDriver } from '../../../src/drivers/quorum.js';
import { rawDriver } from '../../../src/drivers/raw.js';
import { throttleDriver } from '../../../src/drivers/throttle.js';
import type { FlatOptions } from '../../../src/options/types.js';

// Expected names are what qemu-img info 7.2 prints for the same options.
describe('node filenames (bdrv_refresh_filename)', () => {
  const name = async (options: FlatOptions) =>
    (await new BlockLayer([nullCoDriver, rawDriver, blkdebugDriver, quorumDriver, throttleDriver]).openNode(undefined, options)).filename;

  it('keeps plain names where reopening them rebuilds the node', async () => {
    expect(await name({ driver: 'null-co' })).toBe('null-co://');
    expect(await name({ driver: 'null-co', 'latency-ns': '0' })).toBe('null-co://');
    expect(await name({ driver: 'raw', 'file.driver': 'null-co' })).toBe('null-co://');
    expect(await name({ driver: 'raw', 'file.driver': 'blkdebug', 'file.image.driver': 'null-co' })).toBe('blkdebug::null-co://');
    expect(await name({ driver: 'blkdebug', config: '/dev/null', 'image.driver': 'null-co' })).toBe('blkdebug:/dev/null:null-co://');
  });

  it('falls back to json: with the strong options as given and the children', async () => {
    expect(await name({ driver: 'null-co', size: '1M' })).toBe('json:{"driver": "null-co", "size": "1M"}');
    expect(await name({ driver: 'raw', offset: '512', 'file.driver': 'null-co' })).toBe(
      'json:{"offset": "512", "driver": "raw", "file": {"driver": "null-co"}}',
    );
    expect(await name({ driver: 'raw', 'file.driver': 'raw', 'file.file.driver': 'null-co' })).toBe(
      'json:{"driver": "raw", "file": {"driver": "raw", "file": {"driver": "null-co"}}}',
    );
    expect(await name({ driver: 'blkdebug', align: '4096', 'image.driver': 'null-co' })).toBe(
      'json:{"image": {"driver": "null-co"}, "driver": "blkdebug", "align": "4096"}',
    );
    expect(await name({ driver: 'quorum', 'vote-threshold': '1', 'children.0.driver': 'null-co', 'children.1.driver': 'null-co' })).toBe(
      'json:{"children": [{"driver": "null-co"}, {"driver": "null-co"}], "driver": "quorum", "vote-threshold": "1"}',
    );
  });
});
