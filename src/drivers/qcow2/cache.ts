/**
 * Write-back caches of L2 table slices and refcount blocks (QEMU's Qcow2Cache). Entries are
 * reference-counted while in use so they are never evicted under a caller; dirty entries are
 * written on eviction and on flush, after whatever the cache depends on: the other cache
 * (refcount blocks before the L2 tables that use them; L2 tables before refcount decreases)
 * or a flush of the file (guest data before the L2 entries pointing at it).
 */
import type { BdrvChild } from '../../block/child.js';
import { debugEvent } from '../../block/io.js';
import { makeTable, type Table } from './entries.js';

interface CacheEntry {
  /**
   * What callers get: an object of its own whose shape never changes, so the code that reads
   * tables stays optimised while the entry's fields change (offsets past 2^31 turn a field
   * from small integers to doubles, which gives the entry a new hidden class).
   */
  table: Table;
  offset: number;
  dirty: boolean;
  refs: number;
  /** False while the table is still being read from the file. */
  loaded: boolean;
}

export class TableCache {
  /** Offset -> entry, in least-recently-used-first order. */
  private readonly entries = new Map<number, CacheEntry>();
  private readonly byTable = new WeakMap<Table, CacheEntry>();
  /** The entry last moved to the end of `entries`: touching it again changes nothing. */
  private mostRecent: CacheEntry | undefined;
  /** The cache that must be written (and the file flushed) before this one. */
  private depends: TableCache | undefined;
  private dependsOnFlush = false;

  constructor(
    private readonly file: BdrvChild,
    /** Bytes per entry: an L2 slice or a refcount block. */
    readonly tableSize: number,
    private capacity: number,
    /** blkdebug event fired before each entry write. */
    private readonly updateEvent: string,
    /** Refuses an entry write that would land on other metadata. */
    private readonly checkWrite: (offset: number, bytes: number) => Promise<void>,
  ) {}

  resize(capacity: number): void {
    this.capacity = capacity;
  }

  /** The table at `offset`, read from the file unless cached; `put` it when done. */
  async get(offset: number): Promise<Table> {
    return this.acquire(offset, true);
  }

  /**
   * The table at `offset` if it is cached, for a caller that uses it without waiting (so needs
   * no reference and no `put`).
   */
  peek(offset: number): Table | undefined {
    const entry = this.entries.get(offset);
    if (!entry?.loaded) return undefined;
    this.touch(entry);
    return entry.table;
  }

  /** A cache entry for `offset` without reading it (the caller fills it in). */
  async getEmpty(offset: number): Promise<Table> {
    return this.acquire(offset, false);
  }

  private async acquire(offset: number, read: boolean): Promise<Table> {
    let entry = this.entries.get(offset);
    if (entry) {
      this.touch(entry);
      entry.refs++;
      return entry.table;
    }
    await this.makeRoom();
    entry = this.entries.get(offset);
    if (entry) {
      entry.refs++;
      return entry.table;
    }
    const data = new Uint8Array(this.tableSize);
    entry = { table: makeTable(data), offset, dirty: false, refs: 1, loaded: !read };
    this.entries.set(offset, entry);
    this.mostRecent = entry;
    this.byTable.set(entry.table, entry);
    if (read) {
      try {
        await this.file.read(offset, this.tableSize, data);
        entry.loaded = true;
      } catch (e) {
        this.entries.delete(offset);
        throw e;
      }
    }
    return entry.table;
  }

  /** Make `entry` the most recently used (the map's last key). */
  private touch(entry: CacheEntry): void {
    if (this.mostRecent === entry) return;
    this.entries.delete(entry.offset);
    this.entries.set(entry.offset, entry);
    this.mostRecent = entry;
  }

  /** Evict least recently used idle entries (writing them if dirty) until there is room for one. */
  private async makeRoom(): Promise<void> {
    while (this.entries.size >= this.capacity) {
      let victim: CacheEntry | undefined;
      for (const e of this.entries.values()) {
        if (e.refs === 0) {
          victim = e;
          break;
        }
      }
      if (!victim) return;
      await this.writeEntry(victim);
      if (victim.refs === 0 && !victim.dirty) this.entries.delete(victim.offset);
    }
  }

  put(table: Table): void {
    const entry = this.byTable.get(table);
    if (entry && entry.refs > 0) entry.refs--;
  }

  markDirty(table: Table): void {
    const entry = this.byTable.get(table);
    if (entry) entry.dirty = true;
  }

  /** Whether `offset` is cached (QEMU's qcow2_cache_is_table_offset). */
  has(offset: number): boolean {
    return this.entries.has(offset);
  }

  /** Drop a cached table whose cluster was freed, without writing it. */
  discard(offset: number): void {
    this.entries.delete(offset);
  }

  /** Write everything back and forget it (before the on-disk structure is replaced). */
  async empty(): Promise<void> {
    await this.flush();
    this.entries.clear();
  }

  /** This cache's entries may only be written after `dependency`'s. */
  async setDependency(dependency: TableCache): Promise<void> {
    if (dependency.depends) await dependency.flushDependency();
    if (this.depends && this.depends !== dependency) await this.flushDependency();
    this.depends = dependency;
  }

  /** Entries may only be written after the file has been flushed (the data they point to is stable). */
  dependOnFlush(): void {
    this.dependsOnFlush = true;
  }

  private async flushDependency(): Promise<void> {
    await this.depends!.flush();
    this.depends = undefined;
    this.dependsOnFlush = false;
  }

  private async writeEntry(entry: CacheEntry): Promise<void> {
    if (!entry.dirty || entry.offset === 0) return;
    if (this.depends) {
      await this.flushDependency();
    } else if (this.dependsOnFlush) {
      await this.file.flush();
      this.dependsOnFlush = false;
    }
    await this.checkWrite(entry.offset, this.tableSize);
    debugEvent(this.file.node, this.updateEvent);
    entry.dirty = false;
    try {
      await this.file.write(entry.offset, this.tableSize, entry.table.data);
    } catch (e) {
      entry.dirty = true;
      throw e;
    }
  }

  /** Write every dirty entry (QEMU's qcow2_cache_write). */
  async write(): Promise<void> {
    if (this.depends) await this.flushDependency();
    let error: unknown;
    for (const entry of [...this.entries.values()]) {
      try {
        await this.writeEntry(entry);
      } catch (e) {
        error ??= e;
      }
    }
    if (error !== undefined) throw error;
  }

  /** Write every dirty entry, then flush the file. */
  async flush(): Promise<void> {
    let error: unknown;
    try {
      await this.write();
    } catch (e) {
      error = e;
    }
    await this.file.flush();
    if (error !== undefined) throw error;
  }
}
