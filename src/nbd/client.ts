/**
 * The client side of the NBD protocol (github.com/NetworkBlockDevice/nbd `doc/proto.md`) on a
 * node:net socket, negotiated the way QEMU 7.2's client does: fixed newstyle, structured
 * replies, the `base:allocation` meta context, NBD_OPT_GO asking for block sizes (and
 * NBD_OPT_LIST plus NBD_OPT_EXPORT_NAME where a server has no GO). Requests carry a cookie
 * each; up to MAX_IN_FLIGHT of them wait for their replies at once, which may come in any order.
 */
import type { Socket } from 'node:net';
import { BlkioError, toBlkioError, type Errno } from '../errors.js';
import { lazyBuiltin } from '../lazy-builtin.js';

/** Loaded on the first connection: node:net costs every other command 1.6 MiB of memory at startup. */
const net = lazyBuiltin<typeof import('node:net')>('node:net');

const NBD_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
const OPTION_MAGIC = 0x49484156454f5054n; // "IHAVEOPT"
const OLDSTYLE_MAGIC = 0x00420281861253n;
const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;

export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_STARTTLS = 5;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_SET_META_CONTEXT = 10;

export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
const REP_ERROR = 0x80000000;
export const REP_ERR_UNSUP = REP_ERROR + 1;
export const REP_ERR_POLICY = REP_ERROR + 2;
export const REP_ERR_INVALID = REP_ERROR + 3;
export const REP_ERR_PLATFORM = REP_ERROR + 4;
export const REP_ERR_TLS_REQD = REP_ERROR + 5;
export const REP_ERR_UNKNOWN = REP_ERROR + 6;
export const REP_ERR_SHUTDOWN = REP_ERROR + 7;
export const REP_ERR_BLOCK_SIZE_REQD = REP_ERROR + 8;

export const INFO_EXPORT = 0;
export const INFO_BLOCK_SIZE = 3;

/** Transmission flags of an export. */
export const EXPORT_HAS_FLAGS = 1 << 0;
export const EXPORT_READ_ONLY = 1 << 1;
export const EXPORT_SEND_FLUSH = 1 << 2;
export const EXPORT_SEND_FUA = 1 << 3;
export const EXPORT_SEND_TRIM = 1 << 5;
export const EXPORT_SEND_WRITE_ZEROES = 1 << 6;
export const EXPORT_CAN_MULTI_CONN = 1 << 8;
export const EXPORT_SEND_FAST_ZERO = 1 << 11;

export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

export const REPLY_FLAG_DONE = 1;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
const REPLY_TYPE_ERROR_BIT = 0x8000;
export const REPLY_TYPE_ERROR = REPLY_TYPE_ERROR_BIT + 1;
export const REPLY_TYPE_ERROR_OFFSET = REPLY_TYPE_ERROR_BIT + 2;

/** base:allocation extent flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

/** The longest name or query string the protocol allows. */
export const MAX_STRING_SIZE = 4096;
/** The largest read or write QEMU's client sends in one request (NBD_MAX_BUFFER_SIZE). */
export const MAX_BUFFER_SIZE = 32 * 1024 * 1024;
/** Requests waiting for replies at once, as QEMU's client (further ones queue). */
const MAX_IN_FLIGHT = 16;
/** Option replies QEMU reads into memory at most (the data of a read can be larger). */
const MAX_OPTION_PAYLOAD = MAX_BUFFER_SIZE;

/** Where the server listens; `abstract` unix sockets live in Linux's abstract namespace. */
export type NbdAddress = { type: 'unix'; path: string; abstract?: boolean } | { type: 'inet'; host: string; port: string };

export interface NbdExportInfo {
  size: number;
  /** EXPORT_* transmission flags. */
  flags: number;
  /** NBD_INFO_BLOCK_SIZE, 0 when the server sent none. */
  minBlock: number;
  optBlock: number;
  maxBlock: number;
  structuredReplies: boolean;
  /** The id of the meta context asked for (`base:allocation`), when the server has it. */
  metaContext?: number;
}

/** NBD error numbers are Linux's; the client knows these and takes anything else as EINVAL. */
function replyErrno(value: number): Errno {
  const known: Record<number, Errno> = { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };
  return known[value] ?? 'EINVAL';
}

function protocolError(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/**
 * The bytes a socket delivers, taken in pieces of the sizes asked for. Only one reader asks at
 * a time (the handshake, then the reply loop).
 */
class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private error: Error | undefined;
  private waiter: (() => void) | undefined;

  constructor(socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      this.wake();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', (e) => {
      this.error = e;
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  /** Exactly `length` bytes into `target` (a new buffer when absent); EIO when the stream ends first. */
  async read(length: number, target?: Uint8Array): Promise<Buffer> {
    while (this.buffered < length) {
      // A reset or a failed write means the peer is gone, as an end of the stream does.
      if (this.error || this.ended) throw new BlkioError('EIO', 'Unexpected end-of-file before all data were read');
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
    const out = target ? Buffer.from(target.buffer, target.byteOffset, length) : Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const chunk = this.chunks[0]!;
      const take = Math.min(chunk.length, length - done);
      chunk.copy(out, done, 0, take);
      done += take;
      if (take === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(take);
    }
    this.buffered -= length;
    return out;
  }
}

/** The text QEMU shows for an address in its connection errors. */
export function describeAddress(address: NbdAddress): string {
  return address.type === 'unix' ? address.path : `${address.host}:${address.port}`;
}

/** A request as it goes on the wire: magic, flags, type, cookie, offset, length (data follows for writes). */
function requestHeader(type: number, flags: number, cookie: bigint, offset: number, length: number): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(REQUEST_MAGIC, 0);
  header.writeUInt16BE(flags, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeBigUInt64BE(BigInt(offset), 16);
  header.writeUInt32BE(length, 24);
  return header;
}

function openSocket(address: NbdAddress): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = address.type === 'unix'
      ? net().connect({ path: address.abstract ? `\0${address.path}` : address.path })
      : net().connect({ host: address.host, port: Number(address.port) });
    const fail = (e: Error) => {
      socket.destroy();
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') {
        reject(new BlkioError('EINVAL', `address resolution failed for ${describeAddress(address)}: Name or service not known`));
      } else {
        // Node names the first address's errno also when it tried several (an AggregateError).
        const { code } = toBlkioError(e);
        reject(new BlkioError(code, `Failed to connect to '${describeAddress(address)}': ${new BlkioError(code).message}`));
      }
    };
    socket.once('error', fail);
    socket.once('connect', () => {
      socket.off('error', fail);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}

interface OptionReply {
  option: number;
  type: number;
  payload: Buffer;
}

/** The negotiation phase: options sent one at a time, each answered by one or more replies. */
class Negotiation {
  constructor(private readonly socket: Socket, private readonly reader: SocketReader) {}

  sendOption(option: number, data: Uint8Array = new Uint8Array(0)): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(OPTION_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.socket.write(header);
    if (data.length > 0) this.socket.write(data);
  }

  /** NBD_OPT_ABORT, sent as a courtesy before giving up; no reply is awaited. */
  abort(): void {
    this.sendOption(OPT_ABORT);
  }

  async reply(option: number): Promise<OptionReply> {
    const header = await this.reader.read(20).catch((e: BlkioError) => {
      throw e.prepend('Failed to read option reply: ');
    });
    if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw protocolError('Unexpected option reply magic');
    const replied = header.readUInt32BE(8);
    if (replied !== option) throw protocolError(`Unexpected option type ${replied.toString(16)} expected ${option.toString(16)}`);
    const type = header.readUInt32BE(12);
    const length = header.readUInt32BE(16);
    if (length > MAX_OPTION_PAYLOAD) throw protocolError(`server's reply to option ${option.toString(16)} is too long`);
    const payload = length > 0 ? await this.reader.read(length) : Buffer.alloc(0);
    return { option, type, payload };
  }

  /**
   * An error reply as QEMU words it (the server's message, if any, as a hint); undefined for
   * ERR_UNSUP, after which the client tries another way.
   */
  static errorOf(reply: OptionReply): BlkioError | undefined {
    const hex = reply.option.toString(16);
    const names: Record<number, string> = {
      [OPT_EXPORT_NAME]: 'export name', [OPT_LIST]: 'list', [OPT_STARTTLS]: 'starttls', [OPT_GO]: 'go', [OPT_STRUCTURED_REPLY]: 'structured reply',
      [OPT_SET_META_CONTEXT]: 'set meta context',
    };
    const what = `${hex} (${names[reply.option] ?? 'unknown'})`;
    let message: string;
    switch (reply.type) {
      case REP_ERR_UNSUP: return undefined;
      case REP_ERR_POLICY: message = `Denied by server for option ${what}`; break;
      case REP_ERR_INVALID: message = `Invalid parameters for option ${what}`; break;
      case REP_ERR_PLATFORM: message = `Server lacks support for option ${what}`; break;
      case REP_ERR_TLS_REQD: message = `TLS negotiation required before option ${what}`; break;
      case REP_ERR_UNKNOWN: message = 'Requested export not available'; break;
      case REP_ERR_SHUTDOWN: message = `Server shutting down before option ${what}`; break;
      case REP_ERR_BLOCK_SIZE_REQD: message = `Server requires INFO_BLOCK_SIZE for option ${what}`; break;
      default: message = `Unknown error code when asking for option ${what}`;
    }
    const hints = reply.payload.length > 0 ? [`server reported: ${reply.payload.toString('latin1')}`] : [];
    return new BlkioError('EINVAL', message, hints);
  }

  /** Send `option` and fail on an error reply other than ERR_UNSUP (then the reply is returned). */
  async checkedReply(option: number): Promise<OptionReply> {
    const reply = await this.reply(option);
    if (reply.type & REP_ERROR) {
      const error = Negotiation.errorOf(reply);
      if (error) throw error;
    }
    return reply;
  }
}

function nameWithLength(name: string): Buffer {
  const bytes = Buffer.from(name, 'utf8');
  const out = Buffer.alloc(4 + bytes.length);
  out.writeUInt32BE(bytes.length, 0);
  bytes.copy(out, 4);
  return out;
}

/**
 * NBD_OPT_STARTTLS, asked first when the client has TLS credentials. blkio has no TLS: a server
 * that refuses gives QEMU's error, one that accepts cannot go on.
 */
async function negotiateStartTls(n: Negotiation): Promise<void> {
  n.sendOption(OPT_STARTTLS);
  const reply = await n.checkedReply(OPT_STARTTLS);
  if (reply.type === REP_ERR_UNSUP) throw new BlkioError('EINVAL', "Server don't support STARTTLS option");
  throw new BlkioError('ENOTSUP', 'TLS connections are not supported');
}

/** A server that cannot negotiate STARTTLS (old style, or new style without the fixed flag). */
const NO_STARTTLS = 'Server does not support STARTTLS';

async function negotiateStructuredReplies(n: Negotiation): Promise<boolean> {
  n.sendOption(OPT_STRUCTURED_REPLY);
  const reply = await n.checkedReply(OPT_STRUCTURED_REPLY);
  if (reply.type === REP_ERR_UNSUP) return false;
  if (reply.type !== REP_ACK || reply.payload.length !== 0) throw protocolError('server sent invalid reply to structured reply option');
  return true;
}

/** NBD_OPT_SET_META_CONTEXT for one context: its id, or undefined when the server has no such context. */
async function negotiateMetaContext(n: Negotiation, exportName: string, context: string): Promise<number | undefined> {
  const name = nameWithLength(exportName);
  const query = nameWithLength(context);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(1);
  n.sendOption(OPT_SET_META_CONTEXT, Buffer.concat([name, count, query]));
  let id: number | undefined;
  for (;;) {
    const reply = await n.checkedReply(OPT_SET_META_CONTEXT);
    if (reply.type === REP_ERR_UNSUP) return undefined;
    if (reply.type === REP_ACK) return id;
    if (reply.type !== REP_META_CONTEXT || reply.payload.length < 4) throw protocolError('unexpected reply to set meta context');
    const replied = reply.payload.subarray(4).toString('utf8');
    if (replied !== context) throw protocolError(`Unexpected context name ${replied}`);
    if (id !== undefined) throw protocolError('Server replied with more than one context');
    id = reply.payload.readUInt32BE(0);
  }
}

/** NBD_OPT_GO with a request for block sizes: false when the server lacks GO. */
async function negotiateGo(n: Negotiation, exportName: string, info: NbdExportInfo): Promise<boolean> {
  const requests = Buffer.alloc(4);
  requests.writeUInt16BE(1, 0);
  requests.writeUInt16BE(INFO_BLOCK_SIZE, 2);
  n.sendOption(OPT_GO, Buffer.concat([nameWithLength(exportName), requests]));
  let sawExport = false;
  for (;;) {
    const reply = await n.checkedReply(OPT_GO);
    if (reply.type === REP_ERR_UNSUP) return false;
    const p = reply.payload;
    if (reply.type === REP_ACK) {
      if (p.length !== 0) throw protocolError('server sent invalid NBD_REP_ACK');
      if (!sawExport) throw protocolError('broken server omitted NBD_INFO_EXPORT');
      return true;
    }
    if (reply.type !== REP_INFO) throw protocolError(`unexpected reply type ${reply.type.toString(16)}, expected ${REP_INFO.toString(16)}`);
    if (p.length < 2) throw protocolError(`NBD_REP_INFO length ${p.length} is too short`);
    const type = p.readUInt16BE(0);
    if (type === INFO_EXPORT) {
      if (p.length !== 12) throw protocolError(`remaining export info len ${p.length - 2} is unexpected size`);
      info.size = Number(p.readBigUInt64BE(2));
      info.flags = p.readUInt16BE(10);
      sawExport = true;
    } else if (type === INFO_BLOCK_SIZE) {
      if (p.length !== 14) throw protocolError(`remaining export info len ${p.length - 2} is unexpected size`);
      info.minBlock = p.readUInt32BE(2);
      info.optBlock = p.readUInt32BE(6);
      info.maxBlock = p.readUInt32BE(10);
      checkBlockSizes(info);
    }
  }
}

/** Block sizes must be powers of two that fit together, as the protocol says. */
function checkBlockSizes(info: NbdExportInfo): void {
  const powerOfTwo = (v: number) => v > 0 && (v & (v - 1)) === 0;
  if (!powerOfTwo(info.minBlock)) throw protocolError(`server minimum block size ${info.minBlock} is not a power of two`);
  if (!powerOfTwo(info.optBlock) || info.optBlock < info.minBlock) throw protocolError(`server preferred block size ${info.optBlock} is not valid`);
  if (info.maxBlock < info.minBlock || info.maxBlock % info.minBlock !== 0) {
    throw protocolError(`server maximum block size ${info.maxBlock} is not valid`);
  }
}

/** Whether the server lists `exportName` (true too when it cannot list). */
async function exportListed(n: Negotiation, exportName: string): Promise<boolean> {
  n.sendOption(OPT_LIST);
  let found = false;
  for (;;) {
    const reply = await n.checkedReply(OPT_LIST);
    if (reply.type === REP_ERR_UNSUP) return true;
    if (reply.type === REP_ACK) return found;
    if (reply.type !== REP_SERVER || reply.payload.length < 4) throw protocolError(`Unexpected reply type ${reply.type.toString(16)} expected ${REP_SERVER.toString(16)}`);
    const length = reply.payload.readUInt32BE(0);
    if (length > reply.payload.length - 4) throw protocolError('incorrect option name length');
    if (reply.payload.subarray(4, 4 + length).toString('utf8') === exportName) found = true;
  }
}

/** The pre-GO way into transmission: the reply is the export's size and flags, no errors. */
async function negotiateExportName(n: Negotiation, reader: SocketReader, exportName: string, zeroes: boolean, info: NbdExportInfo): Promise<void> {
  n.sendOption(OPT_EXPORT_NAME, Buffer.from(exportName, 'utf8'));
  const reply = await reader.read(10).catch((e: BlkioError) => {
    throw e.prepend('Failed to read export length: ');
  });
  info.size = Number(reply.readBigUInt64BE(0));
  info.flags = reply.readUInt16BE(8);
  if (zeroes) await reader.read(124);
}

interface PendingRequest {
  type: number;
  offset: number;
  length: number;
  /** Where a read's data goes. */
  buffer?: Uint8Array;
  /** A block-status reply's first extent. */
  extent?: { length: number; flags: number };
  /** The first error the server reported for this request. */
  error?: BlkioError;
  resolve: () => void;
  reject: (e: BlkioError) => void;
}

/** One connection to an export, in transmission phase. */
export class NbdClient {
  private readonly pending = new Map<bigint, PendingRequest>();
  private nextCookie = 1n;
  private inFlight = 0;
  private readonly queue: (() => void)[] = [];
  /** Why the connection can no longer be used (the server went away, or it broke the protocol). */
  private failure: BlkioError | undefined;
  private closed = false;

  private constructor(private readonly socket: Socket, private readonly reader: SocketReader, readonly info: NbdExportInfo) {
    void this.receiveLoop();
  }

  /**
   * Connect to `address` and negotiate `exportName` as QEMU 7.2's client does; block status
   * reports the meta context `context` (`base:allocation`, or another the server offers).
   */
  static async connect(address: NbdAddress, exportName: string, context = 'base:allocation', tls = false): Promise<NbdClient> {
    const socket = await openSocket(address);
    const reader = new SocketReader(socket);
    try {
      const info = await NbdClient.handshake(socket, reader, exportName, context, tls);
      return new NbdClient(socket, reader, info);
    } catch (e) {
      socket.destroy();
      throw e;
    }
  }

  private static async handshake(
    socket: Socket, reader: SocketReader, exportName: string, context: string, tls: boolean,
  ): Promise<NbdExportInfo> {
    const hello = (await reader.read(8).catch((e: BlkioError) => {
      throw e.prepend('Failed to read initial magic: ');
    })).readBigUInt64BE(0);
    if (hello !== NBD_MAGIC) throw protocolError(`Bad initial magic received: 0x${hello.toString(16).padStart(16, '0')}`);
    const style = (await reader.read(8).catch((e: BlkioError) => {
      throw e.prepend('Failed to read server magic: ');
    })).readBigUInt64BE(0);
    const info: NbdExportInfo = { size: 0, flags: 0, minBlock: 0, optBlock: 0, maxBlock: 0, structuredReplies: false };
    if (style === OLDSTYLE_MAGIC) {
      if (tls) throw new BlkioError('EINVAL', NO_STARTTLS);
      if (exportName !== '') throw protocolError('Server does not support non-empty export names');
      const header = await reader.read(12).catch((e: BlkioError) => {
        throw e.prepend('Failed to read export length: ');
      });
      info.size = Number(header.readBigUInt64BE(0));
      const flags = header.readUInt32BE(8);
      if (flags > 0xffff) throw protocolError(`Unexpected export flags 0x${flags.toString(16)}`);
      info.flags = flags;
      await reader.read(124).catch((e: BlkioError) => {
        throw e.prepend('Failed to read reserved block: ');
      });
      return info;
    }
    if (style !== OPTION_MAGIC) throw protocolError(`Bad server magic received: 0x${style.toString(16).padStart(16, '0')}`);
    const serverFlags = (await reader.read(2).catch((e: BlkioError) => {
      throw e.prepend('Failed to read server flags: ');
    })).readUInt16BE(0);
    const fixed = (serverFlags & FLAG_FIXED_NEWSTYLE) !== 0;
    const zeroes = (serverFlags & FLAG_NO_ZEROES) === 0;
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(serverFlags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    socket.write(clientFlags);
    const n = new Negotiation(socket, reader);
    try {
      if (tls && !fixed) throw new BlkioError('EINVAL', NO_STARTTLS);
      if (fixed) {
        if (tls) await negotiateStartTls(n);
        info.structuredReplies = await negotiateStructuredReplies(n);
        if (info.structuredReplies) info.metaContext = await negotiateMetaContext(n, exportName, context);
        if (await negotiateGo(n, exportName, info)) return info;
        if (!(await exportListed(n, exportName))) throw new BlkioError('EINVAL', `No export with name '${exportName}' available`);
      }
      // Without GO nothing else was negotiated for this export.
      info.structuredReplies = false;
      info.metaContext = undefined;
      await negotiateExportName(n, reader, exportName, zeroes, info);
      return info;
    } catch (e) {
      if (fixed && !socket.destroyed) n.abort();
      throw e;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Transmission

  private async slot(): Promise<void> {
    while (this.inFlight >= MAX_IN_FLIGHT) await new Promise<void>((resolve) => this.queue.push(resolve));
    this.inFlight++;
  }

  private release(): void {
    this.inFlight--;
    this.queue.shift()?.();
  }

  /** Send one request (with its data for a write) and wait until its reply is complete. */
  private async request(type: number, flags: number, offset: number, length: number, data?: Uint8Array, buffer?: Uint8Array): Promise<PendingRequest> {
    await this.slot();
    try {
      // A connection that broke (or was closed) fails every further request, as QEMU's does.
      if (this.failure || this.closed) throw new BlkioError('EIO');
      const cookie = this.nextCookie++;
      let request!: PendingRequest;
      const done = new Promise<void>((resolve, reject) => {
        request = { type, offset, length, buffer, resolve, reject };
      });
      this.pending.set(cookie, request);
      this.socket.write(requestHeader(type, flags, cookie, offset, length));
      if (data) this.socket.write(data.subarray(0, length));
      await done;
      if (request.error) throw request.error;
      return request;
    } finally {
      this.release();
    }
  }

  /** End the connection for good: every request waiting fails with EIO. */
  private fail(error: BlkioError): void {
    if (!this.failure) this.failure = error;
    this.socket.destroy();
    for (const request of this.pending.values()) request.reject(new BlkioError('EIO'));
    this.pending.clear();
  }

  /** Read replies as they come and hand each to its request, until the connection ends. */
  private async receiveLoop(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.reader.read(4)).readUInt32BE(0);
        if (magic === SIMPLE_REPLY_MAGIC) await this.simpleReply();
        else if (magic === STRUCTURED_REPLY_MAGIC && this.info.structuredReplies) await this.structuredChunk();
        else throw protocolError(`invalid magic (got 0x${magic.toString(16)})`);
      }
    } catch (e) {
      this.fail(e instanceof BlkioError ? e : new BlkioError('EIO'));
    }
  }

  private requestOf(cookie: bigint): PendingRequest {
    const request = this.pending.get(cookie);
    if (!request) throw protocolError('unexpected cookie value');
    return request;
  }

  private finish(cookie: bigint, request: PendingRequest): void {
    this.pending.delete(cookie);
    request.resolve();
  }

  private async simpleReply(): Promise<void> {
    const rest = await this.reader.read(12);
    const error = rest.readUInt32BE(0);
    const cookie = rest.readBigUInt64BE(4);
    const request = this.requestOf(cookie);
    if (this.info.structuredReplies && request.type === CMD_READ) throw protocolError('Protocol error: simple reply when structured reply chunk was expected');
    if (error !== 0) request.error = new BlkioError(replyErrno(error));
    else if (request.type === CMD_READ) await this.reader.read(request.length, request.buffer);
    else if (request.type === CMD_BLOCK_STATUS) throw protocolError('Protocol error: simple reply to block status');
    this.finish(cookie, request);
  }

  private async structuredChunk(): Promise<void> {
    const rest = await this.reader.read(16);
    const flags = rest.readUInt16BE(0);
    const type = rest.readUInt16BE(2);
    const cookie = rest.readBigUInt64BE(4);
    const length = rest.readUInt32BE(12);
    const request = this.requestOf(cookie);
    if (type === REPLY_TYPE_OFFSET_DATA && request.type === CMD_READ) {
      if (length <= 8) throw protocolError('Protocol error: invalid payload for NBD_REPLY_TYPE_OFFSET_DATA');
      const offset = Number((await this.reader.read(8)).readBigUInt64BE(0));
      const size = length - 8;
      this.checkInside(request, offset, size);
      await this.reader.read(size, request.buffer!.subarray(offset - request.offset));
    } else {
      if (length > MAX_OPTION_PAYLOAD) throw protocolError('Payload too large');
      const payload = length > 0 ? await this.reader.read(length) : Buffer.alloc(0);
      this.chunkPayload(request, type, flags, payload);
    }
    if (flags & REPLY_FLAG_DONE) this.finish(cookie, request);
  }

  private checkInside(request: PendingRequest, offset: number, size: number): void {
    if (offset < request.offset || size > request.length || offset > request.offset + request.length - size) {
      throw protocolError('Protocol error: server sent chunk exceeding requested region');
    }
  }

  private chunkPayload(request: PendingRequest, type: number, flags: number, payload: Buffer): void {
    if (type & REPLY_TYPE_ERROR_BIT) {
      if (payload.length < 6) throw protocolError('Protocol error: invalid payload for structured error');
      const error = payload.readUInt32BE(0);
      if (error === 0) throw protocolError('Protocol error: server sent structured error chunk with error = 0');
      if (payload.readUInt16BE(4) > payload.length - 6) throw protocolError('Protocol error: server sent structured error chunk with incorrect message size');
      request.error ??= new BlkioError(replyErrno(error));
      return;
    }
    switch (type) {
      case REPLY_TYPE_NONE:
        if (!(flags & REPLY_FLAG_DONE)) throw protocolError('Protocol error: NBD_REPLY_TYPE_NONE chunk without NBD_REPLY_FLAG_DONE flag set');
        if (payload.length) throw protocolError('Protocol error: NBD_REPLY_TYPE_NONE chunk with nonzero length');
        return;
      case REPLY_TYPE_OFFSET_HOLE: {
        if (request.type !== CMD_READ || payload.length !== 12) throw protocolError('Protocol error: invalid payload for NBD_REPLY_TYPE_OFFSET_HOLE');
        const offset = Number(payload.readBigUInt64BE(0));
        const size = payload.readUInt32BE(8);
        if (size === 0) throw protocolError('Protocol error: server sent chunk exceeding requested region');
        this.checkInside(request, offset, size);
        request.buffer!.fill(0, offset - request.offset, offset - request.offset + size);
        return;
      }
      case REPLY_TYPE_BLOCK_STATUS: {
        if (request.type !== CMD_BLOCK_STATUS || payload.length < 12) throw protocolError('Protocol error: invalid payload for NBD_REPLY_TYPE_BLOCK_STATUS');
        const id = payload.readUInt32BE(0);
        if (id !== this.info.metaContext) {
          throw protocolError(`Protocol error: unexpected context id ${id} for NBD_REPLY_TYPE_BLOCK_STATUS, when negotiated context id is ${this.info.metaContext}`);
        }
        if (request.extent) throw protocolError('Several BLOCK_STATUS chunks in reply');
        const length = payload.readUInt32BE(4);
        if (length === 0) throw protocolError('Protocol error: server sent status chunk with zero length');
        request.extent = { length, flags: payload.readUInt32BE(8) };
        return;
      }
      default:
        throw protocolError(`Unexpected reply type: ${type} for command ${request.type}`);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Commands

  // Empty reads and writes (the block layer passes them down) need no request.
  async read(offset: number, length: number, buffer: Uint8Array): Promise<void> {
    if (length > 0) await this.request(CMD_READ, 0, offset, length, undefined, buffer);
  }

  async write(offset: number, data: Uint8Array, length: number, fua: boolean): Promise<void> {
    if (length > 0) await this.request(CMD_WRITE, fua ? CMD_FLAG_FUA : 0, offset, length, data);
  }

  /** `flags`: CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_FAST_ZERO. */
  async writeZeroes(offset: number, length: number, flags: number): Promise<void> {
    await this.request(CMD_WRITE_ZEROES, flags, offset, length);
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.request(CMD_TRIM, 0, offset, length);
  }

  async flush(): Promise<void> {
    await this.request(CMD_FLUSH, 0, 0, 0);
  }

  /** The first extent of the meta context at `offset` (its flags, STATE_* for `base:allocation`, and its length, at most `length`). */
  async blockStatus(offset: number, length: number): Promise<{ length: number; flags: number }> {
    const request = await this.request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, offset, length);
    if (!request.extent) throw new BlkioError('EIO', 'Server did not reply with any status extents');
    return { length: Math.min(request.extent.length, length), flags: request.extent.flags };
  }

  /** NBD_CMD_DISC, then the socket closes; requests still waiting fail. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.failure && !this.socket.destroyed) {
      const header = requestHeader(CMD_DISC, 0, this.nextCookie++, 0, 0);
      await new Promise<void>((resolve) => this.socket.end(header, () => resolve()));
    }
    this.socket.destroy();
  }
}
