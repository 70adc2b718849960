import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockLayer } from '../../../src/block/graph.js';
import { PERM_CONSISTENT_READ, PERM_WRITE } from '../../../src/block/permissions.js';
import { allDrivers } from '../../../src/drivers/index.js';
import { graphImage, openBlockdevs, openDrives, openGraph, type GraphDefinitions } from '../../../src/cli/open-graph.js';

const dir = mkdtempSync(join(tmpdir(), 'blkio-open-graph-'));
const image = join(dir, 'disk.raw');
writeFileSync(image, Buffer.alloc(65536, 0x5a));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function newLayer(warnings: string[] = []): BlockLayer {
  return new BlockLayer(allDrivers, (text) => warnings.push(text));
}

async function failure(run: (layer: BlockLayer) => Promise<unknown>): Promise<string> {
  const layer = newLayer();
  try {
    await run(layer);
  } catch (e) {
    await layer.closeAll();
    return (e as Error).message;
  }
  await layer.closeAll();
  throw new Error('expected a failure');
}

describe('openBlockdevs', () => {
  it('opens each definition as a root, later ones referring to earlier ones', async () => {
    const layer = newLayer();
    const last = await openBlockdevs(layer, [`file,node-name=f,filename=${image}`, 'raw,node-name=r,file=f']);
    expect(last.nodeName).toBe('r');
    expect(last.file?.node).toBe(layer.findNode('f'));
    // A blockdev root does not unmap unless asked (QEMU's default), nor is it read-only.
    expect(last.discardUnmap).toBe(false);
    expect(last.readOnly).toBe(false);
    await layer.closeAll();
  });

  it('takes JSON definitions with typed values', async () => {
    const layer = newLayer();
    const node = await openBlockdevs(layer, [`{"driver": "file", "node-name": "f", "filename": "${image}", "read-only": true}`]);
    expect(node.readOnly).toBe(true);
    await layer.closeAll();
  });

  it('checks what QEMU checks before opening', async () => {
    expect(await failure((l) => openBlockdevs(l, [`node-name=f,filename=${image}`]))).toBe("Parameter 'driver' is missing");
    expect(await failure((l) => openBlockdevs(l, [`file,filename=${image}`]))).toBe("'node-name' must be specified for the root node");
    expect(await failure((l) => openBlockdevs(l, ['nosuch,node-name=x']))).toBe("Parameter 'driver' does not accept value 'nosuch'");
    // QEMU names the enum member alone, without its path.
    expect(await failure((l) => openBlockdevs(l, ['raw,node-name=r,file.driver=nope']))).toBe(
      "Parameter 'driver' does not accept value 'nope'",
    );
    expect(await failure((l) => openBlockdevs(l, [`file,node-name=f,filename=${image},bogus=1`]))).toBe("Parameter 'bogus' is unexpected");
    expect(await failure((l) => openBlockdevs(l, ['raw,node-name=r,file.driver=file']))).toBe("Parameter 'file.filename' is missing");
    expect(await failure((l) => openBlockdevs(l, ['raw,node-name=r,file=f']))).toBe("Cannot find device='f' nor node-name='f'");
    expect(await failure((l) => openBlockdevs(l, [`file,node-name=f,filename=${image}`, `file,node-name=f,filename=${image}`]))).toBe(
      "Duplicate nodes with node-name='f'",
    );
    expect(await failure((l) => openBlockdevs(l, ['file,node-name=f,x']))).toBe("Expected '=' after parameter 'x'");
    expect(await failure((l) => openBlockdevs(l, ['{"driver": "file",}']))).toBe('JSON parse error, expecting value');
  });
});

describe('openDrives', () => {
  it('names drives by id, else none<unit> with the first free unit', async () => {
    const layer = newLayer();
    const drives = await openDrives(layer, [
      `file=${image},format=raw`,
      `file=${image},format=raw,id=mine`,
      `file=${image},format=raw`,
      `file=${image},format=raw,index=7`,
    ]);
    expect(drives.map((d) => d.id)).toEqual(['none0', 'mine', 'none2', 'none7']);
    expect(drives.map((d) => d.blk.describe())).toEqual([
      "block device 'none0'", "block device 'mine'", "block device 'none2'", "block device 'none7'",
    ]);
    await layer.closeAll();
  });

  it('refuses duplicate ids, units and names', async () => {
    expect(await failure((l) => openDrives(l, [`file=${image},format=raw,id=a`, `file=${image},format=raw,id=a`]))).toBe(
      "Duplicate ID 'a' for drive",
    );
    expect(await failure((l) => openDrives(l, [`file=${image},format=raw,unit=1`, `file=${image},format=raw,index=1`]))).toBe(
      'drive with bus=0, unit=1 (index=1) exists',
    );
    expect(await failure((l) => openDrives(l, [`file=${image},format=raw,index=1,unit=1`]))).toBe('index cannot be used with bus and unit');
    expect(await failure((l) => openDrives(l, [`file=${image},format=raw,id=x,node-name=x`]))).toBe(
      "Device name 'x' conflicts with an existing node name",
    );
    expect(await failure((l) => openDrives(l, [`file=${image},format=raw,id=1x`]))).toBe("Parameter 'id' expects an identifier");
  });

  it('gives the drive keys to the drive and the rest to the node', async () => {
    const layer = newLayer();
    const [drive] = await openDrives(layer, [`file=${image},format=raw,node-name=n,cache=unsafe,aio=threads,werror=stop,rerror=report,discard=unmap`]);
    const node = drive!.blk.node;
    expect(node.nodeName).toBe('n');
    expect(node.driver.name).toBe('raw');
    expect(node.discardUnmap).toBe(true);
    expect(node.openOptions).not.toHaveProperty('cache');
    expect(node.openOptions).not.toHaveProperty('aio');
    expect(drive!.writethrough).toBe(false);
    await layer.closeAll();
  });

  it('opens a drive node without unmapping unless asked, its children with', async () => {
    const layer = newLayer();
    const [drive] = await openDrives(layer, [`file=${image},format=raw`]);
    expect(drive!.blk.node.discardUnmap).toBe(false);
    expect(drive!.blk.node.file?.node.discardUnmap).toBe(true);
    await layer.closeAll();
  });

  it('takes the driver from format or driver, not both', async () => {
    const layer = newLayer();
    const [drive] = await openDrives(layer, [`file=${image},driver=raw`]);
    expect(drive!.blk.node.driver.name).toBe('raw');
    await layer.closeAll();
    expect(await failure((l) => openDrives(l, [`file=${image},format=raw,driver=raw`]))).toBe("Cannot specify both 'driver' and 'format'");
  });

  it('checks the drive options with QEMU texts', async () => {
    const bad = async (extra: string) => failure((l) => openDrives(l, [`file=${image},format=raw,${extra}`]));
    expect(await bad('cache=fast')).toBe('invalid cache option');
    expect(await bad('aio=posix')).toBe('invalid aio option');
    expect(await bad('werror=panic')).toBe("'panic' invalid write error action");
    expect(await bad('rerror=enospc')).toBe("'enospc' invalid read error action");
    expect(await bad('media=tape')).toBe("'tape' invalid media");
    expect(await bad('if=usb')).toBe("unsupported bus type 'usb'");
    expect(await bad('if=ide')).toMatch(/only if=none is supported/);
    expect(await bad('read-only=maybe')).toBe("Parameter 'read-only' expects 'on' or 'off'");
    expect(await bad('copy-on-read=1')).toBe("Parameter 'copy-on-read' expects 'on' or 'off'");
    expect(await bad('index=x')).toBe("Parameter 'index' expects a number");
  });

  it('puts an implicit copy-on-read node above a drive with copy-on-read=on', async () => {
    const layer = newLayer();
    const [drive] = await openDrives(layer, [`file=${image},format=raw,node-name=n,copy-on-read=on`]);
    const top = drive!.blk.node;
    expect(top.driver.name).toBe('copy-on-read');
    expect(top.implicit).toBe(true);
    expect(top.filteredChild?.node.nodeName).toBe('n');
    expect(layer.visibleNodes().map((n) => n.driver.name)).not.toContain('copy-on-read');
    await layer.closeAll();
  });

  it('disables copy-on-read on a read-only drive with a warning', async () => {
    for (const [text, readOnlyUser] of [[`file=${image},format=raw,read-only=on,copy-on-read=on`, false],
      [`file=${image},format=raw,copy-on-read=on`, true], [`file=${image},format=raw,media=cdrom,copy-on-read=on`, false]] as const) {
      const warnings: string[] = [];
      const layer = newLayer(warnings);
      const [drive] = await openDrives(layer, [text], readOnlyUser);
      expect(warnings).toEqual(['warning: disabling copy-on-read on read-only drive']);
      expect(drive!.blk.node.driver.name).toBe('raw');
      expect(drive!.blk.node.readOnly).toBe(true);
      expect(drive!.blk.root.perm).toBe(PERM_CONSISTENT_READ);
      await layer.closeAll();
    }
  });

  it('opens a temporary overlay with snapshot=on, leaving the image alone', async () => {
    const layer = newLayer();
    const [drive] = await openDrives(layer, [`file=${image},format=raw,snapshot=on`]);
    const top = drive!.blk.node;
    expect(top.driver.name).toBe('qcow2');
    expect(top.backing?.node.driver.name).toBe('raw');
    await drive!.blk.write(0, 4, new Uint8Array(4));
    const back = new Uint8Array(4);
    await top.backing!.node.file!.read(0, 4, back);
    expect([...back]).toEqual([0x5a, 0x5a, 0x5a, 0x5a]);
    await layer.closeAll();
  });
});

describe('openGraph and graphImage', () => {
  const blockdevs = [`file,node-name=f,filename=${image}`, 'raw,node-name=r,file=f'];
  const drives = [`file=${image},format=raw,id=d0,file.locking=off`, `file=${image},format=raw,id=d1,file.locking=off`];

  async function pick(defs: GraphDefinitions) {
    const layer = newLayer();
    const image = graphImage(layer, await openGraph(layer, defs), defs);
    return { layer, image };
  }

  it('acts on --node (a node name or a drive id), else the last drive, else the last blockdev', async () => {
    for (const [defs, expected] of [
      [{ blockdevs, drives: [] }, 'r'],
      [{ blockdevs, drives: [], node: 'f' }, 'f'],
      [{ blockdevs: [], drives }, "block device 'd1'"],
      [{ blockdevs: [], drives, node: 'd0' }, "block device 'd0'"],
      [{ blockdevs, drives, node: 'r' }, 'r'],
    ] as const) {
      const { layer, image } = await pick(defs);
      const name = image.blk.describe() === 'an unnamed block device' ? image.blk.node.nodeName : image.blk.describe();
      expect(name).toBe(expected);
      await layer.closeAll();
    }
  });

  it('gives a new root user write permission unless -r or its node is read-only', async () => {
    for (const [defs, perm] of [
      [{ blockdevs, drives: [] }, PERM_CONSISTENT_READ | PERM_WRITE],
      [{ blockdevs, drives: [], readOnly: true }, PERM_CONSISTENT_READ],
      [{ blockdevs: [`file,node-name=f,filename=${image},read-only=on`], drives: [] }, PERM_CONSISTENT_READ],
    ] as const) {
      const { layer, image } = await pick(defs);
      expect(image.blk.root.perm).toBe(perm);
      await layer.closeAll();
    }
  });

  it('keeps the cache mode of a root user on a node', async () => {
    const { layer, image } = await pick({ blockdevs, drives: [], writethrough: true });
    expect(image.writethrough).toBe(true);
    await layer.closeAll();
  });

  it('reports an unknown --node as QEMU does', async () => {
    expect(await failure(async (l) => graphImage(l, await openGraph(l, { blockdevs, drives: [], node: 'x' }), { blockdevs, drives: [], node: 'x' }))).toBe(
      "Cannot find device='' nor node-name='x'",
    );
  });
});
