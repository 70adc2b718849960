/**
 * The one interface every driver implements: formats (qcow2, raw), protocols (file, null-co)
 * and filters (copy-on-read, throttle, blkdebug, ...) alike. A driver is a single exported
 * object; per-node state lives in `node.state`. Callbacks receive the node and reach their
 * children only through `BdrvChild` edges, so the generic layer checks every request.
 */
import type { BdrvChild } from './child.js';
import type { BlockNode } from './node.js';
import type { OpenContext } from './graph.js';
import type { PermPair } from './permissions.js';
import type { FlatOptions } from '../options/types.js';
import { STATUS_OFFSET_VALID } from './flags.js';

export type DriverKind = 'format' | 'protocol' | 'filter';

/** Child role bits (QEMU's BDRV_CHILD_*): what a child holds for its parent. */
export const ROLE_DATA = 0x1;
export const ROLE_METADATA = 0x2;
export const ROLE_FILTERED = 0x4;
export const ROLE_COW = 0x8;
export const ROLE_PRIMARY = 0x10;
export const ROLE_IMAGE = ROLE_DATA | ROLE_METADATA | ROLE_PRIMARY;
export const ROLE_FILTER_CHILD = ROLE_FILTERED | ROLE_PRIMARY;

/**
 * `exact-number` / `exact-size`: the uint64 kept as a bigint, for drivers that report the value
 * as given or store it in a narrower C type. `json-string`: a string the driver reads straight
 * from the options (QEMU's qdict_get_try_str, not QemuOpts): a value of another JSON type is
 * not taken, so the open refuses it as an unsupported option.
 */
export type OptionType = 'string' | 'json-string' | 'bool' | 'number' | 'exact-number' | 'size' | 'exact-size' | 'enum';

export interface OptionSpec {
  type: OptionType;
  /** Allowed values of an `enum` option. */
  values?: readonly string[];
  default?: string | number | boolean;
}

export type OptionSpecs = Record<string, OptionSpec>;
export type ParsedOptions = Record<string, string | number | bigint | boolean | undefined>;

export interface BlockStatusResult {
  /** STATUS_* bits. */
  status: number;
  /** Bytes from the queried offset that share this status (> 0 unless at end of file). */
  pnum: number;
  /** Host offset in `file` when STATUS_OFFSET_VALID (or STATUS_RAW) is set. */
  map?: number;
  /** The node `map` refers to. */
  file?: BlockNode;
}

/**
 * Block-status answers for consecutive ranges, as blockStatusNow would give them one after
 * another (answer i starts where answer i-1 ends), kept as numbers in arrays: a map of a large
 * image walks hundreds of thousands of answers, and one object each cost more than the walk.
 */
export class StatusList {
  /** STATUS_* bits of each answer. */
  readonly status: Int32Array;
  readonly pnum: Float64Array;
  /** Host offset in `file` where the answer has STATUS_OFFSET_VALID. */
  readonly map: Float64Array;
  /** The node every valid `map` refers to. */
  file: BlockNode | undefined;
  count = 0;

  constructor(readonly capacity: number) {
    this.status = new Int32Array(capacity);
    this.pnum = new Float64Array(capacity);
    this.map = new Float64Array(capacity);
  }

  /** Add an answer; false (nothing added) when the list is full or `file` differs. */
  push(status: number, pnum: number, map: number, file: BlockNode | undefined): boolean {
    const i = this.count;
    if (i === this.capacity) return false;
    if (status & STATUS_OFFSET_VALID) {
      if (this.file === undefined) this.file = file;
      else if (this.file !== file) return false;
    }
    this.status[i] = status;
    this.pnum[i] = pnum;
    this.map[i] = map;
    this.count = i + 1;
    return true;
  }

  clear(): void {
    this.count = 0;
    this.file = undefined;
  }
}

export interface DriverInfo {
  clusterSize?: number;
  /** Unit of allocation when smaller than a cluster (qcow2 extended L2). */
  subclusterSize?: number;
  vmStateOffset?: number;
  /** The image was not closed cleanly (qcow2's dirty bit): `cleanly shut down: no`. */
  isDirty?: boolean;
  /** The image's data is encrypted: `encrypted: yes`. */
  encrypted?: boolean;
  /** Data can only be written compressed (convert writes it so without -c). */
  needsCompressedWrites?: boolean;
}

/** `Format specific information:` of `info` / `qemu-img info`, as ordered key/value pairs. */
export interface FormatSpecificInfo {
  type: string;
  /** The QAPI members; `info` prints them as JSON or dumps them as human lines. */
  json: Record<string, unknown>;
}

/** One option of `qemu-img create -o`, in the driver's order (the `Formatting ...` line follows it). */
export interface CreateOptionSpec {
  name: string;
  type: 'string' | 'bool' | 'number' | 'size';
  /** Printed in the `Formatting` line even when the user did not set it. */
  default?: string | number | boolean;
  help: string;
}

/** Validated create options: size plus whatever `-o` and `-b`/`-F` said. */
export interface CreateRequest {
  filename: string;
  size: number;
  options: Record<string, string | number | boolean>;
  /**
   * Create a further host file (qcow2's external data file) and run `use` with it open for
   * writing; the file is removed again if `use` fails. Absent where no files can be made.
   */
  withNewFile?: (filename: string, use: (file: BdrvChild) => Promise<void>) => Promise<void>;
}

/** What `qemu-img measure` reports (QEMU's BlockMeasureInfo). */
export interface MeasureResult {
  required: number;
  fullyAllocated: number;
  /** Room for the source's persistent bitmaps, when both images can hold them. */
  bitmaps?: number;
}

/** The image `qemu-img measure` sizes a copy of: its top node and the status of its whole backing chain. */
export interface MeasureSource {
  node: BlockNode;
  chainStatus(offset: number, bytes: number): Promise<BlockStatusResult>;
}

/** A persistent dirty bitmap stored in an image. */
export interface PersistentBitmap {
  name: string;
  granularity: number;
}

/** What `qemu-img check` found (QEMU's BdrvCheckResult). */
export interface CheckResult {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset?: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

/**
 * An internal snapshot as listed (QEMU's QEMUSnapshotInfo). `id` and `name` are byte strings
 * (one char per byte), as stored in the image.
 */
export interface SnapshotInfo {
  id: string;
  name: string;
  vmStateSize: bigint;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  /** Absent when the snapshot records no instruction count. */
  icount?: bigint;
}

/** A permission change a driver prepared (host resources such as file locks): kept or undone with the whole update. */
export interface PermissionUpdate {
  commit(): void;
  abort(): void;
}

export interface BlockDriver<S = unknown> {
  readonly name: string;
  readonly kind: DriverKind;
  /** Filename prefix this protocol claims (`null-co` for `null-co://`, `blkdebug` for `blkdebug:`). */
  readonly protocolPrefix?: string;
  /** Further prefixes of the same protocol (QEMU registers a driver for each: `nbd+unix`, `nbd+tcp`). */
  readonly otherProtocolPrefixes?: readonly string[];
  /** The protocol name qemu-io's `info` prints for the node, when not the driver's name. */
  readonly protocolName?: string;
  /**
   * A filter (QEMU's is_filter) passes everything to one child of the FILTERED role: block
   * status, info and backing-chain walks go straight through it. raw is not one, even though
   * without offset/size its child has the FILTERED role.
   */
  readonly isFilter?: boolean;
  /** Whether a removable medium is in (QEMU's bdrv_is_inserted); without it, whether every child's is. */
  isInserted?(node: BlockNode<S>): boolean;
  /** QEMU's bdrv_needs_filename: the open fails unless `filename` is a non-empty string. */
  readonly needsFilename?: boolean;
  /** The driver has a `backing` child (COW format) the graph opens after `open`. */
  readonly supportsBacking?: boolean;
  /** Options the driver accepts besides its children; validated with QEMU's texts. */
  readonly options: OptionSpecs;
  /** Score how well the first bytes of a file match this format (0 = not at all). */
  probe?(header: Uint8Array, filename: string): number;
  /** How surely a plain filename names a host device this protocol opens (0: not at all). */
  probeDevice?(filename: string): number;
  /** Turn a prefixed filename (`null-co://`, `blkdebug:cfg:img`) into options. */
  parseFilename?(filename: string, options: Record<string, unknown>): void;

  open(node: BlockNode<S>, ctx: OpenContext): Promise<S>;
  close?(node: BlockNode<S>): Promise<void>;
  /**
   * Switch between read-only and read-write access (bdrv_reopen); `node.readOnly` is already
   * updated. Going read-only, the nodes below can still be written (the driver writes out
   * what it caches); going read-write, they can be already.
   */
  reopen?(node: BlockNode<S>): Promise<void>;
  /** A reopen turns cache.direct on or off (`node.readOnly` as it is to be). */
  setCacheDirect?(node: BlockNode<S>, direct: boolean): Promise<void>;
  /** QEMU 7.2's driver has no bdrv_reopen_prepare: any reopen of a graph with this node fails. */
  readonly cannotReopen?: boolean;
  /**
   * A reopen changes the driver's options (bdrv_reopen_prepare): `opts` are all of them as the
   * node is to have them, parsed. Throw if they cannot apply; else return what applies them
   * once the whole reopen is known to work. Without it a reopen may change none of them.
   */
  prepareReopen?(node: BlockNode<S>, opts: ParsedOptions): () => Promise<void>;
  /**
   * The driver options a reopen gives (`given`) merged with those the node has (`old`), as
   * bdrv_join_options: by default the given ones win; a driver whose options depend on each
   * other drops old ones that a new one replaces.
   */
  joinOptions?(given: FlatOptions, old: FlatOptions): FlatOptions;

  /**
   * The node's parents are about to take `perm` and share `shared` (cumulative): claim what
   * that needs outside the graph (file-posix's image locks), or throw to refuse the change.
   */
  preparePermissions?(node: BlockNode<S>, perm: number, shared: number): PermissionUpdate | undefined;

  /** Permissions to take and share on `child`, given what the node's parents take and share. */
  childPerm?(node: BlockNode<S>, child: BdrvChild, parents: PermPair): PermPair;

  /** Request flags the driver handles itself; the generic layer emulates or strips the rest. */
  supportedWriteFlags?(node: BlockNode<S>): number;
  supportedZeroFlags?(node: BlockNode<S>): number;
  supportedReadFlags?(node: BlockNode<S>): number;

  getLength(node: BlockNode<S>): number;
  /** Bytes the node occupies on its storage (`disk size`), when known. */
  allocatedSize?(node: BlockNode<S>): Promise<number | undefined>;

  read?(node: BlockNode<S>, offset: number, bytes: number, buf: Uint8Array, flags: number): Promise<void>;
  write?(node: BlockNode<S>, offset: number, bytes: number, buf: Uint8Array, flags: number): Promise<void>;
  /** Write zeroes efficiently; throw ENOTSUP to make the generic layer write a zero buffer. */
  writeZeroes?(node: BlockNode<S>, offset: number, bytes: number, flags: number): Promise<void>;
  writeCompressed?(node: BlockNode<S>, offset: number, bytes: number, buf: Uint8Array): Promise<void>;
  discard?(node: BlockNode<S>, offset: number, bytes: number): Promise<void>;
  /** Write what the node caches down to its children (QEMU's flush_to_os); runs on every flush. */
  flush?(node: BlockNode<S>): Promise<void>;
  /**
   * Make what was written stable on the node's own storage (QEMU's flush_to_disk): skipped when
   * nothing was written since the last flush, and with cache.no-flush.
   */
  flushToDisk?(node: BlockNode<S>): Promise<void>;
  /** The whole flush of the node and what is below it (quorum, blkverify), instead of the generic one. */
  flushAll?(node: BlockNode<S>): Promise<void>;
  /** `flags` may hold REQ_ZERO_WRITE: the grown area must read as zeroes. */
  truncate?(node: BlockNode<S>, size: number, exact: boolean, prealloc: string, flags: number): Promise<void>;
  /** The request flags `truncate` honours (none when absent). */
  supportedTruncateFlags?(node: BlockNode<S>): number;
  /**
   * VM state (bdrv_save_vmstate / bdrv_load_vmstate): bytes at `pos` of a separate stream kept
   * beside the guest disk. A node without these passes the request to its primary child.
   */
  saveVmState?(node: BlockNode<S>, pos: number, bytes: number, buf: Uint8Array): Promise<void>;
  loadVmState?(node: BlockNode<S>, pos: number, bytes: number, buf: Uint8Array): Promise<void>;
  /** `wantZero` false: only what is cheap to know (see nodeBlockStatus). */
  blockStatus?(node: BlockNode<S>, offset: number, bytes: number, wantZero: boolean): Promise<BlockStatusResult>;
  /**
   * blockStatus answered from memory without waiting (a cached mapping), or undefined when the
   * driver would have to wait or has an error to report: blockStatus then answers. Never throws.
   * A driver with only this callback always answers without waiting.
   */
  blockStatusNow?(node: BlockNode<S>, offset: number, bytes: number): BlockStatusResult | undefined;
  /**
   * blockStatusNow for [offset, offset+bytes) and the ranges after it, answer after answer, into
   * `list` (cleared), for as many as the driver has at hand (e.g. one cached table); none when
   * the first would need waiting. Never throws.
   */
  blockStatusListNow?(node: BlockNode<S>, offset: number, bytes: number, list: StatusList): void;
  getInfo?(node: BlockNode<S>): DriverInfo;
  formatSpecific?(node: BlockNode<S>): Promise<FormatSpecificInfo | undefined> | FormatSpecificInfo | undefined;
  /** Named debug events (blkdebug rules): `cor_write`, `l2_load`, ...; settles when a breakpoint lets go. */
  debugEvent?(node: BlockNode<S>, event: string): void | Promise<void>;
  /**
   * Breakpoints (blkdebug; qemu-io break/remove_break/resume/wait_break): a request reaching
   * `event` is suspended under `tag` until resumed. Throw a BlkioError to refuse (ENOENT for
   * an unknown event or tag).
   */
  debugBreakpoint?(node: BlockNode<S>, event: string, tag: string): void;
  debugRemoveBreakpoint?(node: BlockNode<S>, tag: string): void;
  debugResume?(node: BlockNode<S>, tag: string): void;
  debugIsSuspended?(node: BlockNode<S>, tag: string): boolean;
  /** QEMU deletes the image file again when creating the image in it fails (qcow2). */
  readonly removesFailedImage?: boolean;
  /** `qemu-img create` options in QEMU's order, and the creation itself (on a protocol node opened by the caller). */
  readonly createOptions?: readonly CreateOptionSpec[];
  /** Protocol create options the format takes for itself, unlisted (LUKS: `preallocation`, for its payload). */
  readonly takesProtocolCreateOptions?: readonly string[];
  /** Refuses bad create options before the image file is made (QEMU's drivers parse them first). */
  checkCreateOptions?(request: CreateRequest): void;
  create?(file: BdrvChild, request: CreateRequest): Promise<void>;
  /**
   * `qemu-img measure`: the file size an image made with `options` needs, for `source`'s data
   * when given; `lookupObject` finds the objects options name (an encryption key secret).
   */
  measure?(options: CreateRequest['options'], source: MeasureSource | undefined, lookupObject: (id: string) => unknown): Promise<MeasureResult>;
  /** The persistent dirty bitmaps of the image; undefined when this image cannot store any. */
  persistentBitmaps?(node: BlockNode<S>): Promise<PersistentBitmap[] | undefined>;
  /** Whether the image can hold persistent bitmaps at all (absent: it cannot). */
  supportsPersistentDirtyBitmaps?(node: BlockNode<S>): boolean;
  /** Refuses (with QEMU's text) a new persistent bitmap the image could not store. */
  canStoreNewDirtyBitmap?(node: BlockNode<S>, name: string, granularity: number): Promise<void>;
  /** Drop a persistent bitmap from the image (absent: nothing to do). */
  removePersistentDirtyBitmap?(node: BlockNode<S>, name: string): Promise<void>;
  /** `qemu-img amend` options in QEMU's order, and the amendment of an open image. */
  readonly amendOptions?: readonly CreateOptionSpec[];
  amend?(node: BlockNode<S>, options: CreateRequest['options'], force: boolean, progress: (done: number, total: number) => void): Promise<void>;
  /** Consistency check; `repair` is 'leaks' or 'all' when asked to fix. Messages go to `report`. */
  check?(node: BlockNode<S>, repair: 'leaks' | 'all' | undefined, report: (line: string) => void): Promise<CheckResult>;
  /** Rewrite the backing file name/format recorded in the image (rebase, commit, stream). */
  changeBackingFile?(node: BlockNode<S>, filename: string, format: string): Promise<void>;
  /** Drop all data of this layer so reads fall through to the backing chain (qemu-img commit without -d). */
  makeEmpty?(node: BlockNode<S>): Promise<void>;
  /** Internal snapshots (qcow2): list them, take one (the driver picks the ID), revert to one, delete one. */
  snapshotList?(node: BlockNode<S>): SnapshotInfo[];
  snapshotCreate?(node: BlockNode<S>, info: Omit<SnapshotInfo, 'id'>): Promise<void>;
  /** Throws the plain errno (ENOENT: no snapshot has this ID or name). */
  snapshotGoto?(node: BlockNode<S>, idOrName: string): Promise<void>;
  /**
   * A driver without snapshots is closed and opened again around a snapshot revert of its
   * child (QEMU's bdrv_snapshot_goto fallback): the warnings its open printed, it prints again.
   */
  warnAgainAfterSnapshotGoto?(node: BlockNode<S>): void;
  snapshotDelete?(node: BlockNode<S>, id: string, name: string): Promise<void>;
  /** Read a snapshot instead of the current state (read-only nodes); the snapshot is matched by what is given. */
  snapshotLoadTmp?(node: BlockNode<S>, id: string | undefined, name: string | undefined): Promise<void>;

  /** Options describing the node for `json:` filenames and `blkio graph` (besides children). */
  describeOptions?(node: BlockNode<S>): Record<string, unknown>;
  /** Set `node.limits` beyond what the generic layer inherits from the children. */
  refreshLimits?(node: BlockNode<S>): void;
}
