/**
 * `blkio img snapshot [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename`
 *
 * Lists, takes, applies (reverts to) and deletes internal snapshots, with qemu-img 7.2's texts;
 * also QEMU's snapshot table (`Snapshot list:`) and SnapshotInfo that `info` prints. Snapshot
 * IDs and names are byte strings in the image: arguments are stored as their UTF-8 bytes.
 */
import { BlkioError } from '../../errors.js';
import type { SnapshotInfo } from '../../block/driver.js';
import type { BlockNode } from '../../block/node.js';
import {
  createSnapshot, deleteSnapshot, findSnapshotByName, gotoSnapshot, listSnapshots, loadSnapshotTemporarily,
  loadSnapshotTemporarilyByIdOrName,
} from '../../block/internal-snapshots.js';
import { parseQemuOpts } from '../../options/qemuopts.js';
import { sizeToStr } from '../../options/size.js';
import {
  oneImageName, openImg, ReportLines, reportWarning, runSubcommand, UsageError, withLayer, writeOut,
} from './common.js';
import { FORCE_SHARE_OPTION, IMAGE_OPTS_OPTION, parseImgArgs } from './options.js';

/** QEMU's SnapshotInfo (QAPI), as `info --output=json` prints it; id and name decoded as UTF-8. */
export interface SnapshotInfoJson {
  id: string;
  name: string;
  'vm-state-size': bigint;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': bigint;
  'vm-clock-nsec': bigint;
  icount?: bigint;
}

const NSEC_PER_SEC = 1000000000n;
/** Lengths of QEMUSnapshotInfo's id and name buffers, terminating NUL included. */
const ID_BUFFER = 128;
const NAME_BUFFER = 256;

function decode(byteString: string): string {
  return Buffer.from(byteString, 'latin1').toString('utf8');
}

/** An argument as the byte string QEMU sees; cut to fit a buffer of `buffer` bytes when given. */
function toByteString(arg: string, buffer = Infinity): string {
  return Buffer.from(arg, 'utf8').toString('latin1').slice(0, buffer - 1);
}

function toJson(sn: SnapshotInfo): SnapshotInfoJson {
  return {
    id: decode(sn.id.slice(0, ID_BUFFER - 1)),
    name: decode(sn.name.slice(0, NAME_BUFFER - 1)),
    'vm-state-size': BigInt.asIntN(64, sn.vmStateSize),
    'date-sec': sn.dateSec,
    'date-nsec': sn.dateNsec,
    'vm-clock-sec': sn.vmClockNsec / NSEC_PER_SEC,
    'vm-clock-nsec': sn.vmClockNsec % NSEC_PER_SEC,
    icount: sn.icount === undefined ? undefined : BigInt.asIntN(64, sn.icount),
  };
}

/** The snapshots `info` reports: none when the node keeps none or cannot keep any. */
export function snapshotInfoList(node: BlockNode): SnapshotInfoJson[] {
  try {
    return listSnapshots(node).map(toJson);
  } catch (e) {
    if (e instanceof BlkioError && e.code === 'ENOTSUP') return [];
    throw e;
  }
}

/** printf's %-Ns / %Ns: widths count bytes. */
function pad(text: string, width: number, left: boolean): string {
  const fill = ' '.repeat(Math.max(0, width - Buffer.byteLength(text)));
  return left ? text + fill : fill + text;
}

function two(n: number): string {
  return String(n).padStart(2, '0');
}

/** %0Nd of a C int. */
function zeroPadded(n: bigint, width: number): string {
  const v = BigInt.asIntN(32, n);
  const digits = (v < 0n ? -v : v).toString().padStart(v < 0n ? width - 1 : width, '0');
  return v < 0n ? `-${digits}` : digits;
}

function formatDate(sec: number): string {
  const d = new Date(sec * 1000);
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/** hh:mm:ss.mmm of the guest clock. */
function formatVmClock(nsec: bigint): string {
  const secs = BigInt.asIntN(64, nsec / NSEC_PER_SEC);
  return `${zeroPadded(secs / 3600n, 2)}:${zeroPadded((secs / 60n) % 60n, 2)}:${zeroPadded(secs % 60n, 2)}.` +
    zeroPadded((nsec / 1000000n) % 1000n, 3);
}

/** QEMU's `Snapshot list:` table (bdrv_snapshot_dump rows). */
export function formatSnapshotList(list: readonly SnapshotInfoJson[]): string {
  let out = 'Snapshot list:\n' +
    `${pad('ID', 10, true)}${pad('TAG', 17, true)}${pad('VM SIZE', 8, false)}${pad('DATE', 20, false)}` +
    `${pad('VM CLOCK', 13, false)}${pad('ICOUNT', 11, false)}\n`;
  for (const sn of list) {
    const vmClock = sn['vm-clock-sec'] * NSEC_PER_SEC + sn['vm-clock-nsec'];
    out += `${pad(sn.id, 9, true)} ${pad(sn.name, 16, true)} ${pad(sizeToStr(Number(BigInt.asUintN(64, sn['vm-state-size']))), 8, false)}` +
      `${pad(formatDate(sn['date-sec']), 20, false)}${pad(formatVmClock(vmClock), 13, false)}` +
      `${pad(sn.icount === undefined ? '' : String(sn.icount), 11, false)}\n`;
  }
  return out;
}

/** `-l` of convert and measure: `snapshot.id=ID,snapshot.name=NAME` (either may be left out), or an ID or name. */
export type SnapshotParam = { id?: string; name?: string } | { idOrName: string };

export function parseSnapshotParam(text: string): SnapshotParam {
  if (!text.startsWith('snapshot.')) return { idOrName: text };
  const param: { id?: string; name?: string } = {};
  try {
    for (const [key, value] of parseQemuOpts(text, { id: 'keep', warn: reportWarning })) {
      if (key === 'snapshot.id') param.id = value;
      else if (key === 'snapshot.name') param.name = value;
      else if (key !== 'id') throw new BlkioError('EINVAL', `Invalid parameter '${key}'`);
    }
  } catch (e) {
    if (!(e instanceof BlkioError)) throw e;
    throw new ReportLines([e.message, `Failed in parsing snapshot param '${text}'`]);
  }
  return param;
}

/** Make a read-only node read the snapshot `param` names. */
export async function loadSnapshotParam(node: BlockNode, param: SnapshotParam): Promise<void> {
  try {
    if ('idOrName' in param) await loadSnapshotTemporarilyByIdOrName(node, toByteString(param.idOrName));
    else await loadSnapshotTemporarily(node, byteStringOrNone(param.id), byteStringOrNone(param.name));
  } catch (e) {
    throw e instanceof BlkioError ? e.prepend('Failed to load snapshot: ') : e;
  }
}

function byteStringOrNone(arg: string | undefined): string | undefined {
  return arg === undefined ? undefined : toByteString(arg);
}

type Action = { kind: 'list' } | { kind: 'apply' | 'create' | 'delete'; name: string };

const ACTIONS: Record<string, Action['kind']> = { l: 'list', a: 'apply', c: 'create', d: 'delete' };

/** Now, with the microseconds QEMU's clock gives. */
function now(): { dateSec: number; dateNsec: number } {
  const micros = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  return { dateSec: Math.floor(micros / 1e6), dateNsec: (micros % 1e6) * 1000 };
}

async function perform(node: BlockNode, action: Action): Promise<number> {
  switch (action.kind) {
    case 'list': {
      const list = snapshotInfoList(node);
      if (list.length) writeOut(formatSnapshotList(list));
      return 0;
    }
    case 'create':
      try {
        await createSnapshot(node, {
          name: toByteString(action.name, NAME_BUFFER), vmStateSize: 0n, vmClockNsec: 0n, icount: 0n, ...now(),
        });
      } catch (e) {
        if (!(e instanceof BlkioError)) throw e;
        throw new BlkioError(e.code, `Could not create snapshot '${action.name}': -${e.errnoNumber} (${e.strerror})`);
      }
      return 0;
    case 'apply':
      try {
        await gotoSnapshot(node, toByteString(action.name));
      } catch (e) {
        throw e instanceof BlkioError ? e.prepend(`Could not apply snapshot '${action.name}': `) : e;
      }
      return 0;
    case 'delete': {
      const sn = findSnapshotByName(node, toByteString(action.name, NAME_BUFFER));
      if (!sn) throw new BlkioError('ENOENT', `Could not delete snapshot '${action.name}': snapshot not found`);
      try {
        await deleteSnapshot(node, sn.id, sn.name);
      } catch (e) {
        throw e instanceof BlkioError ? e.prepend(`Could not delete snapshot '${action.name}': `) : e;
      }
      return 0;
    }
  }
}

export function imgSnapshot(argv: string[]): Promise<number> {
  return runSubcommand(async () => {
    let action: Action | undefined;
    // Quiet changes nothing: only errors and the requested list are printed.
    const { imageOpts, forceShare, operands, objects } = parseImgArgs('snapshot', argv, {
      short: ':la:c:d:hqU',
      long: [IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION],
      own: (item) => {
        switch (item.key) {
          case 'l': case 'a': case 'c': case 'd': {
            if (action) throw new UsageError("Cannot mix '-l', '-a', '-c', '-d'");
            const kind = ACTIONS[item.key];
            action = kind === 'list' ? { kind } : { kind, name: item.value };
            return true;
          }
          default: return false;
        }
      },
    });
    const filename = oneImageName(operands);
    return withLayer(objects, async (layer) => {
      const blk = await openImg(layer, { filename, imageOpts, readOnly: action?.kind === 'list', forceShare });
      return action ? await perform(blk.node, action) : 0;
    });
  });
}
