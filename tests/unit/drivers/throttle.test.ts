import { beforeEach, describe, expect, it } from 'vitest';
import { BlockBackend } from '../../../src/block/backend.js';
import { BlockLayer } from '../../../src/block/graph.js';
import { createObject, processObjectArg } from '../../../src/block/objects.js';
import { PERM_ALL, PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { throttleConfigFromProperties } from '../../../src/block/throttle-group.js';
import { nullCoDriver } from '../../../src/drivers/null.js';
import { throttleDriver } from '../../../src/drivers/throttle.js';

function newLayer(): BlockLayer {
  return new BlockLayer([nullCoDriver, throttleDriver]);
}

describe('throttle-group limits', () => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ 'x-iops-total': '-1' }, 'Property values cannot be negative'],
    [{ 'x-iops-total': 'abc' }, "Parameter 'x-iops-total' expects integer"],
    [{ limits: { 'iops-total': '-1' } }, 'bps/iops/max values must be within [0, 1000000000000000]'],
    [{ 'x-iops-total': '1000000000000001' }, 'bps/iops/max values must be within [0, 1000000000000000]'],
    [{ 'x-iops-total': '10', 'x-iops-read': '5' }, 'bps/iops/max total values and read/write values cannot be used at the same time'],
    [{ 'x-iops-total': '10', 'x-iops-total-max': '5' }, 'bps_max/iops_max cannot be lower than bps/iops'],
    [{ 'x-iops-total-max': '5' }, 'bps_max/iops_max require corresponding bps/iops values'],
    [{ 'x-iops-total': '10', 'x-iops-total-max': '20', 'x-iops-total-max-length': '0' }, 'the burst length cannot be 0'],
    [{ 'x-iops-total': '10', 'x-iops-total-max-length': '5' }, 'burst length set without burst rate'],
    [{ 'x-iops-size': '512' }, 'iops size requires an iops value to be set'],
    [{ 'x-iops-total': '10', 'x-iops-total-max': '20', 'x-iops-total-max-length': '4294967296' },
      'x-iops-total-max-length value must be in therange [0, 4294967295]'],
    [{ limits: { 'iops-total-max-length': '4294967296' } }, 'iops-total-max-length value must be in the range [0, 4294967295]'],
    [{ limits: { 'iops-total-max-length': '-1' } }, 'burst length set without burst rate'],
    [{ 'x-iops-total': '10', 'x-iops-total-max': '1000000000000000', 'x-iops-total-max-length': '2' },
      'burst length too high for this burst rate'],
    [{ limits: { 'bps-write': '1k' } }, "Parameter 'limits.bps-write' expects integer"],
    [{ foo: '1' }, "Parameter 'foo' is unexpected"],
    [{ limits: { foo: '1' } }, "Parameter 'limits.foo' is unexpected"],
  ];
  for (const [props, message] of cases) {
    it(`${JSON.stringify(props)}: ${message}`, () => {
      expect(() => throttleConfigFromProperties(props as never)).toThrow(message);
    });
  }

  it('accepts the largest values and hex numbers', () => {
    const cfg = throttleConfigFromProperties({ limits: { 'iops-total': '1000000000000000' }, 'x-bps-read': '0x10' });
    expect(cfg.buckets['iops-total'].avg).toBe(1e15);
    expect(cfg.buckets['bps-read'].avg).toBe(16);
  });
});

describe('throttle-group objects', () => {
  it("validates qom-type and id, and refuses a duplicate id", () => {
    const layer = newLayer();
    expect(() => createObject(layer, { id: 'g' })).toThrow("Parameter 'qom-type' is missing");
    expect(() => createObject(layer, { 'qom-type': 'foo', id: 'g' })).toThrow("Parameter 'qom-type' does not accept value 'foo'");
    expect(() => createObject(layer, { 'qom-type': 'throttle-group' })).toThrow("Parameter 'id' is missing");
    expect(() => createObject(layer, { 'qom-type': 'throttle-group', id: '1g' })).toThrow("Parameter 'id' expects an identifier");
    createObject(layer, { 'qom-type': 'throttle-group', id: 'g' });
    expect(() => createObject(layer, { 'qom-type': 'throttle-group', id: 'g' }))
      .toThrow("attempt to add duplicate property 'g' to object (type 'container')");
  });

  it('takes numbers from JSON only as JSON numbers', () => {
    const layer = newLayer();
    expect(() => processObjectArg(layer, '{"qom-type":"throttle-group","id":"g","x-bps-total":"5"}'))
      .toThrow("Invalid parameter type for 'x-bps-total', expected: integer");
    expect(() => processObjectArg(layer, '{"qom-type":"throttle-group","id":"g","limits":{"bps-total":"1M"}}'))
      .toThrow("Invalid parameter type for 'limits.bps-total', expected: integer");
    processObjectArg(layer, '{"qom-type":"throttle-group","id":"g","limits":{"bps-total":5}}');
    processObjectArg(layer, 'throttle-group,id=h,x-bps-total=5');
  });
});

describe('throttle driver', () => {
  let layer: BlockLayer;
  beforeEach(() => {
    layer = newLayer();
  });

  it('needs an existing group', async () => {
    await expect(layer.openNode(undefined, { driver: 'throttle', 'file.driver': 'null-co' }))
      .rejects.toThrow('Please specify a throttle group');
    await expect(layer.openNode(undefined, { driver: 'throttle', 'throttle-group': 'nope', 'file.driver': 'null-co' }))
      .rejects.toThrow("Throttle group 'nope' does not exist");
  });

  async function throttled(group: string): Promise<BlockBackend> {
    const node = await layer.openNode(undefined, { driver: 'throttle', 'throttle-group': group, 'file.driver': 'null-co' });
    return BlockBackend.attach(node, PERM_CONSISTENT_READ, PERM_ALL);
  }

  it('takes at least the time the iops limit implies', async () => {
    createObject(layer, { 'qom-type': 'throttle-group', id: 'g', limits: { 'iops-total': '20' } });
    const blk = await throttled('g');
    const buf = new Uint8Array(512);
    const start = performance.now();
    for (let i = 0; i < 6; i++) await blk.read(0, 512, buf);
    // The bucket holds 2 operations (a tenth of a second); each one beyond drains at 20/s.
    expect(performance.now() - start).toBeGreaterThanOrEqual(150 - 2);
  });

  it('takes at least the time the bandwidth limit implies', async () => {
    createObject(layer, { 'qom-type': 'throttle-group', id: 'g', 'x-bps-read': String(64 * 1024) });
    const blk = await throttled('g');
    const buf = new Uint8Array(16 * 1024);
    const start = performance.now();
    for (let i = 0; i < 3; i++) await blk.read(0, buf.length, buf);
    // 48 KiB at 64 KiB/s with a 6.4 KiB bucket: the last read starts after >= (32 - 6.4) / 64 s.
    expect(performance.now() - start).toBeGreaterThanOrEqual(400 - 2);
  });

  it('shares one budget between the nodes of a group, serving both', async () => {
    createObject(layer, { 'qom-type': 'throttle-group', id: 'g', limits: { 'iops-total': '20' } });
    const a = await throttled('g');
    const b = await throttled('g');
    const order: string[] = [];
    const start = performance.now();
    const run = async (blk: BlockBackend, name: string) => {
      for (let i = 0; i < 3; i++) {
        await blk.read(0, 512, new Uint8Array(512));
        order.push(name);
      }
    };
    await Promise.all([run(a, 'a'), run(b, 'b')]);
    expect(performance.now() - start).toBeGreaterThanOrEqual(150 - 2);
    expect(order.slice(0, 4).sort()).toEqual(['a', 'a', 'b', 'b']);
  });

  it('does not throttle writes by a read limit', async () => {
    createObject(layer, { 'qom-type': 'throttle-group', id: 'g', 'x-iops-read': '1' });
    const node = await layer.openNode(undefined, { driver: 'throttle', 'throttle-group': 'g', 'file.driver': 'null-co' });
    const blk = BlockBackend.attach(node, PERM_CONSISTENT_READ | PERM_WRITE, PERM_ALL);
    const start = performance.now();
    for (let i = 0; i < 5; i++) await blk.write(0, 512, new Uint8Array(512));
    expect(performance.now() - start).toBeLessThan(500);
  });
});
