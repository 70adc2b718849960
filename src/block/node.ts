/** A node of the block graph: one driver instance, its children by role and its parents. */
import type { BdrvChild } from './child.js';
import type { DirtyBitmap } from './dirty-bitmap.js';
import { ROLE_FILTERED, ROLE_PRIMARY, type BlockDriver } from './driver.js';
import type { BlockLayer } from './graph.js';
import type { FlatOptions } from '../options/types.js';
import { PERM_ALL, type PermPair } from './permissions.js';

/** Request size and alignment constraints (QEMU's BlockLimits), in bytes. */
export interface BlockLimits {
  /** Requests must be aligned to this; the generic layer pads with read-modify-write. */
  requestAlignment: number;
  /** Largest request the driver takes in one call (0 = unlimited). */
  maxTransfer: number;
  /** Preferred alignment of efficient zero writes (0 = request alignment). */
  zeroAlignment: number;
  /** Largest efficient zero write (0 = unlimited). */
  maxZeroes: number;
  discardAlignment: number;
  maxDiscard: number;
}

/**
 * The limits a node takes from the child it passes requests to: only the largest transfer, as
 * QEMU's bdrv_merge_limits. The alignments (request, zero write, discard) and the zero/discard
 * maximums stay the node's own, so the child pads and splits a request (between its blkdebug
 * events), and blkdebug passes a small zero write down instead of refusing it.
 */
export function limitsFrom(child: BlockNode): BlockLimits {
  return { ...defaultLimits(), maxTransfer: child.limits.maxTransfer };
}

function defaultLimits(): BlockLimits {
  return { requestAlignment: 1, maxTransfer: 0, zeroAlignment: 0, maxZeroes: 0, discardAlignment: 0, maxDiscard: 0 };
}

export type DetectZeroes = 'off' | 'on' | 'unmap';

/** A request currently in flight on a node, for serialisation of overlapping requests. */
export interface TrackedRequest {
  start: number;
  end: number;
  serialising: boolean;
  /** Resolves when the request ends; made by the first who waits for it (requestDone in io.ts). */
  done: Promise<void> | undefined;
  resolveDone: (() => void) | undefined;
}

export class BlockNode<S = unknown> {
  state!: S;
  readonly children: BdrvChild[] = [];
  readonly parents: BdrvChild[] = [];
  readonly tracked = new Set<TrackedRequest>();
  limits: BlockLimits = defaultLimits();
  /** Name shown to users; `#blockNNN` when generated. */
  nodeName: string;
  /** Nodes the user did not ask for (the `-C` copy-on-read filter): hidden from listings. */
  implicit = false;
  readOnly: boolean;
  /** The format was guessed from the data, not given (raw then restricts writes to block 0). */
  probed = false;
  discardUnmap = true;
  detectZeroes: DetectZeroes = 'off';
  forceShare = false;
  /** cache.no-flush (cache=unsafe): flushes stop short of the disk, as QEMU's BDRV_O_NO_FLUSH. */
  noFlush = false;
  /** Opened only to be described (QEMU's BDRV_O_NO_IO): its storage children need no consistent reads. */
  withoutIo = false;
  /** Counts completed writes, discards and resizes; a flush syncs only when it moved on (QEMU's write_gen). */
  writeGeneration = 0;
  /** writeGeneration at the last successful flush. */
  flushedGeneration = 0;
  /** A plain filename if the node has one (file protocol or inherited from a pass-through child). */
  filename = '';
  /** The options the node was opened with, minus children, for `json:` names and `blkio graph`. */
  openOptions: FlatOptions = {};
  /** Every option given for the node (children's included), values as given: QEMU's bs->options. */
  givenOptions: FlatOptions = {};
  closed = false;
  /** Backing file name and format as the image header records them (COW formats). */
  backingFile = '';
  backingFormat = '';
  /**
   * Dirty bitmaps over this node's data, newest first as QEMU lists them (persistent ones are
   * loaded and stored by the format).
   */
  readonly dirtyBitmaps: DirtyBitmap[] = [];

  constructor(
    readonly layer: BlockLayer,
    readonly driver: BlockDriver<S>,
    nodeName: string,
    readOnly: boolean,
    readonly autoNamed: boolean,
  ) {
    this.nodeName = nodeName;
    this.readOnly = readOnly;
  }

  child(name: string): BdrvChild | undefined {
    return this.children.find((c) => c.name === name);
  }

  get file(): BdrvChild | undefined {
    return this.child('file');
  }

  get backing(): BdrvChild | undefined {
    return this.child('backing');
  }

  /** The child holding the node's data (a format's file, a filter's child), if any: QEMU's bdrv_primary_child. */
  get primaryChild(): BdrvChild | undefined {
    return this.children.find((c) => c.role & ROLE_PRIMARY);
  }

  /**
   * The first node from this one down the primary children whose driver implements `callback`
   * (the VM state, blkdebug's breakpoints), as QEMU's walks along bdrv_primary_child find them.
   */
  primaryNodeWith(callback: keyof BlockDriver): BlockNode | undefined {
    for (let n: BlockNode | undefined = this; n; n = n.primaryChild?.node) {
      if ((n.driver as BlockDriver)[callback]) return n;
    }
    return undefined;
  }

  /** The child a filter passes everything to; undefined for other nodes. */
  get filteredChild(): BdrvChild | undefined {
    return this.driver.isFilter ? this.children.find((c) => c.role & ROLE_FILTERED) : undefined;
  }

  get isFilter(): boolean {
    return this.filteredChild !== undefined;
  }

  /** The child holding this node's data for COW purposes: backing for formats, the filtered child for filters. */
  get cowChild(): BdrvChild | undefined {
    return this.filteredChild ?? this.backing;
  }

  get isWritable(): boolean {
    return !this.readOnly;
  }

  /** OR of what all parents take, AND of what they share. */
  cumulativePerms(): PermPair {
    let perm = 0;
    let shared = PERM_ALL;
    for (const edge of this.parents) {
      perm |= edge.perm;
      shared &= edge.shared;
    }
    return { perm, shared };
  }

  /** Length in bytes; like QEMU's, always a whole number of 512-byte sectors. */
  getLength(): number {
    const length = this.driver.getLength(this);
    return length % 512 === 0 ? length : length + 512 - (length % 512);
  }

  describe(): string {
    return `node '${this.nodeName}'`;
  }
}
