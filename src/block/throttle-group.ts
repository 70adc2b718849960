/**
 * Throttle groups (QEMU's `throttle-group` object): I/O limits shared by every throttle node
 * that names the group. Each limit is a leaky bucket: a request adds its bytes (or operations)
 * to the bucket, the bucket drains at the average rate, and a request may start only while the
 * bucket is not over its size. A burst rate (`-max`) lets the bucket grow to `max * length`
 * while a second, small bucket keeps the burst itself at the `max` rate.
 *
 * Waiting requests queue per direction; the members of a group take turns (round robin), so
 * one busy node cannot starve the others sharing the budget.
 */
import { BlkioError } from '../errors.js';
import type { OptionTree, OptionValue } from '../options/types.js';
import { isTree } from '../options/json.js';
import { parseInteger } from '../options/qemuopts.js';

/** The largest rate a limit may have (QEMU's THROTTLE_VALUE_MAX). */
export const THROTTLE_VALUE_MAX = 1e15;
const UINT32_MAX = 4294967295;

/** The six buckets, in the order QEMU checks (and reports) them. */
export const BUCKET_NAMES = ['bps-total', 'bps-read', 'bps-write', 'iops-total', 'iops-read', 'iops-write'] as const;
export type BucketName = (typeof BUCKET_NAMES)[number];

export interface BucketLimits {
  /** Average rate per second; 0 = unlimited. */
  avg: number;
  /** Burst rate per second; 0 = no bursts. */
  max: number;
  /** How many seconds a burst at `max` may last. */
  burstLength: number;
}

export interface ThrottleConfig {
  buckets: Record<BucketName, BucketLimits>;
  /** `iops-size`: requests larger than this count as several operations (0 = off). */
  opSize: number;
}

export function unlimitedConfig(): ThrottleConfig {
  const buckets = {} as Record<BucketName, BucketLimits>;
  for (const name of BUCKET_NAMES) buckets[name] = { avg: 0, max: 0, burstLength: 1 };
  return { buckets, opSize: 0 };
}

function invalid(message: string, hints: string[] = []): BlkioError {
  return new BlkioError('EINVAL', message, hints);
}

/** QEMU's throttle_is_valid: the checks and their order decide which message a user sees. */
export function validateThrottleConfig(cfg: ThrottleConfig): void {
  const b = cfg.buckets;
  const mixes = (kind: 'bps' | 'iops', field: 'avg' | 'max') =>
    b[`${kind}-total`][field] !== 0 && (b[`${kind}-read`][field] !== 0 || b[`${kind}-write`][field] !== 0);
  if (mixes('bps', 'avg') || mixes('iops', 'avg') || mixes('bps', 'max') || mixes('iops', 'max')) {
    throw invalid('bps/iops/max total values and read/write values cannot be used at the same time');
  }
  if (cfg.opSize && !b['iops-total'].avg && !b['iops-read'].avg && !b['iops-write'].avg) {
    throw invalid('iops size requires an iops value to be set');
  }
  for (const name of BUCKET_NAMES) {
    const { avg, max, burstLength } = b[name];
    if (avg < 0 || max < 0 || avg > THROTTLE_VALUE_MAX || max > THROTTLE_VALUE_MAX) {
      throw invalid(`bps/iops/max values must be within [0, ${THROTTLE_VALUE_MAX}]`);
    }
    if (!burstLength) throw invalid('the burst length cannot be 0');
    if (burstLength > 1 && !max) throw invalid('burst length set without burst rate');
    if (max && burstLength > THROTTLE_VALUE_MAX / max) throw invalid('burst length too high for this burst rate');
    if (max && !avg) throw invalid('bps_max/iops_max require corresponding bps/iops values');
    if (max && max < avg) throw invalid('bps_max/iops_max cannot be lower than bps/iops');
  }
}

// ---------------------------------------------------------------------------------------------
// Options: the `limits.*` struct and the legacy `x-*` properties of the object

/** Where an option of the object lands: a bucket field or the op size. */
type Target = { bucket: BucketName; field: keyof BucketLimits } | 'opSize';

function limitTargets(): Map<string, Target> {
  const targets = new Map<string, Target>();
  for (const bucket of BUCKET_NAMES) {
    targets.set(bucket, { bucket, field: 'avg' });
    targets.set(`${bucket}-max`, { bucket, field: 'max' });
    targets.set(`${bucket}-max-length`, { bucket, field: 'burstLength' });
  }
  targets.set('iops-size', 'opSize');
  return targets;
}

const TARGETS = limitTargets();

/** An int64 option value from keyval text, or from JSON (`typed`: a string is the wrong type there). */
function integerOption(name: string, value: OptionValue, typed: boolean): number {
  if (typed || typeof value === 'number' || typeof value === 'bigint') return parseInteger(name, value as number | bigint, 'qapi');
  return parseInteger(name, typeof value === 'string' ? value : null, 'keyval');
}

/** Burst lengths are C `unsigned int`: larger values are refused, negative ones wrap. */
function toUint32(value: number): number {
  return Number(BigInt.asUintN(32, BigInt(value)));
}

/** The op size is a C uint64: a negative value wraps to a huge one. */
function toUint64(value: number): number {
  return value < 0 ? Number(BigInt.asUintN(64, BigInt(value))) : value;
}

function setTarget(cfg: ThrottleConfig, target: Target, value: number): void {
  if (target === 'opSize') cfg.opSize = toUint64(value);
  else cfg.buckets[target.bucket][target.field] = value;
}

/** A legacy `x-iops-total=...` property: set immediately, with its own range checks. */
function setLegacyProperty(cfg: ThrottleConfig, name: string, target: Target, raw: OptionValue, typed: boolean): void {
  const value = integerOption(name, raw, typed);
  if (value < 0) throw invalid('Property values cannot be negative');
  if (target !== 'opSize' && target.field === 'burstLength' && value > UINT32_MAX) {
    // QEMU's message lacks the space here ("therange"); kept for byte-identical output.
    throw invalid(`${name} value must be in therange [0, ${UINT32_MAX}]`);
  }
  setTarget(cfg, target, value);
}

/** The `limits` struct: every member parsed first, then applied in bucket order. */
function setLimits(cfg: ThrottleConfig, limits: OptionValue, typed: boolean): void {
  if (!isTree(limits)) throw invalid("Invalid parameter type for 'limits', expected: object");
  const values = new Map<string, number>();
  for (const [key, raw] of Object.entries(limits)) {
    if (!TARGETS.has(key)) throw invalid(`Parameter 'limits.${key}' is unexpected`);
    values.set(key, integerOption(`limits.${key}`, raw, typed));
  }
  for (const [key, target] of TARGETS) {
    const value = values.get(key);
    if (value === undefined) continue;
    if (target !== 'opSize' && target.field === 'burstLength') {
      if (value > UINT32_MAX) throw invalid(`${key} value must be in the range [0, ${UINT32_MAX}]`);
      setTarget(cfg, target, toUint32(value));
    } else {
      setTarget(cfg, target, value);
    }
  }
}

/** The object's properties as `--object throttle-group,help` lists them: name and type. */
export const THROTTLE_GROUP_PROPERTIES: ReadonlyArray<readonly [string, string]> = [
  ['limits', 'ThrottleLimits'], ...[...TARGETS.keys()].map((key) => [`x-${key}`, 'int'] as const),
];

/** Build a group configuration from the object's properties (`qom-type` and `id` excluded). */
export function throttleConfigFromProperties(props: OptionTree): ThrottleConfig {
  const cfg = throttlePropertiesConfig(props);
  validateThrottleConfig(cfg);
  return cfg;
}

/**
 * The configuration the properties set, not yet validated as a whole (QEMU checks that on
 * completion); `typed`: they come from JSON, where numbers must be JSON numbers.
 */
export function throttlePropertiesConfig(props: OptionTree, typed = false): ThrottleConfig {
  const cfg = unlimitedConfig();
  for (const [key, raw] of Object.entries(props)) {
    const legacy = key.startsWith('x-') ? TARGETS.get(key.slice(2)) : undefined;
    if (key === 'limits') setLimits(cfg, raw, typed);
    else if (legacy) setLegacyProperty(cfg, key, legacy, raw, typed);
    else throw invalid(`Parameter '${key}' is unexpected`);
  }
  return cfg;
}

// ---------------------------------------------------------------------------------------------
// Leaky buckets

interface Bucket extends BucketLimits {
  level: number;
  burstLevel: number;
}

/** Seconds a bucket still has to drain before another request may start. */
function bucketWait(bkt: Bucket): number {
  if (!bkt.avg) return 0;
  // Without a burst rate the bucket holds a tenth of a second's worth.
  const size = bkt.max ? bkt.max * bkt.burstLength : bkt.avg / 10;
  if (bkt.level > size) return (bkt.level - size) / bkt.avg;
  if (bkt.burstLength > 1) {
    const burstSize = bkt.max / 10;
    if (bkt.burstLevel > burstSize) return (bkt.burstLevel - burstSize) / bkt.max;
  }
  return 0;
}

function drain(bkt: Bucket, seconds: number): void {
  bkt.level = Math.max(0, bkt.level - bkt.avg * seconds);
  if (bkt.max > bkt.avg) bkt.burstLevel = Math.max(0, bkt.burstLevel - bkt.max * seconds);
}

interface Waiter {
  bytes: number;
  start: () => void;
}

/** Requests of one direction (read or write) waiting for their turn. */
interface Direction {
  isWrite: boolean;
  /** Waiting requests per member, each queue in arrival order. */
  queues: Map<object, Waiter[]>;
  /** The member served last; the next turn goes to the one after it. */
  lastServed: object | undefined;
  timer: ReturnType<typeof setTimeout> | undefined;
}

const now = (): number => performance.now() / 1000;

export class ThrottleGroup {
  private readonly buckets: Record<BucketName, Bucket>;
  private readonly opSize: number;
  private readonly members: object[] = [];
  private readonly directions: [Direction, Direction];
  private lastDrain = now();

  constructor(readonly id: string, config: ThrottleConfig) {
    this.buckets = {} as Record<BucketName, Bucket>;
    for (const name of BUCKET_NAMES) this.buckets[name] = { ...config.buckets[name], level: 0, burstLevel: 0 };
    this.opSize = config.opSize;
    const direction = (isWrite: boolean): Direction => ({ isWrite, queues: new Map(), lastServed: undefined, timer: undefined });
    this.directions = [direction(false), direction(true)];
  }

  join(member: object): void {
    this.members.push(member);
  }

  leave(member: object): void {
    const i = this.members.indexOf(member);
    if (i >= 0) this.members.splice(i, 1);
    for (const d of this.directions) {
      // Anything still queued is let go rather than stranded.
      for (const w of d.queues.get(member) ?? []) w.start();
      d.queues.delete(member);
    }
  }

  /** Resolves when a request of `bytes` by `member` may start; its cost is then booked. */
  admit(member: object, isWrite: boolean, bytes: number): Promise<void> {
    const d = this.directions[isWrite ? 1 : 0];
    if (d.queues.size === 0 && this.waitSeconds(isWrite) === 0) {
      d.lastServed = member;
      this.book(isWrite, bytes);
      return Promise.resolve();
    }
    return new Promise<void>((start) => {
      const queue = d.queues.get(member);
      if (queue) queue.push({ bytes, start });
      else d.queues.set(member, [{ bytes, start }]);
      this.serve(d);
    });
  }

  private relevant(isWrite: boolean): Bucket[] {
    const b = this.buckets;
    return isWrite
      ? [b['bps-total'], b['bps-write'], b['iops-total'], b['iops-write']]
      : [b['bps-total'], b['bps-read'], b['iops-total'], b['iops-read']];
  }

  private waitSeconds(isWrite: boolean): number {
    const t = now();
    for (const bkt of Object.values(this.buckets)) drain(bkt, t - this.lastDrain);
    this.lastDrain = t;
    return Math.max(...this.relevant(isWrite).map(bucketWait));
  }

  private book(isWrite: boolean, bytes: number): void {
    const ops = this.opSize && bytes > this.opSize ? bytes / this.opSize : 1;
    const b = this.buckets;
    const dir = isWrite ? 'write' : 'read';
    for (const [bkt, amount] of [
      [b['bps-total'], bytes], [b[`bps-${dir}`], bytes], [b['iops-total'], ops], [b[`iops-${dir}`], ops],
    ] as const) {
      bkt.level += amount;
      if (bkt.max) bkt.burstLevel += amount;
    }
  }

  /** Let queued requests go, member after member, until the budget says wait. */
  private serve(d: Direction): void {
    if (d.timer !== undefined) return;
    for (;;) {
      const member = this.nextMember(d);
      if (member === undefined) return;
      const wait = this.waitSeconds(d.isWrite);
      if (wait > 0) {
        d.timer = setTimeout(() => {
          d.timer = undefined;
          this.serve(d);
        }, Math.ceil(wait * 1000));
        return;
      }
      const queue = d.queues.get(member)!;
      const waiter = queue.shift()!;
      if (queue.length === 0) d.queues.delete(member);
      d.lastServed = member;
      this.book(d.isWrite, waiter.bytes);
      waiter.start();
    }
  }

  /** The first member after the last one served that has a request waiting. */
  private nextMember(d: Direction): object | undefined {
    const waiting = this.members.filter((m) => d.queues.has(m));
    const last = d.lastServed === undefined ? -1 : this.members.indexOf(d.lastServed);
    return waiting.find((m) => this.members.indexOf(m) > last) ?? waiting[0];
  }
}
