import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CMD_BLOCK_STATUS, CMD_DISC, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_REQ_ONE, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES,
  EXPORT_HAS_FLAGS, EXPORT_SEND_FUA, EXPORT_SEND_WRITE_ZEROES, INFO_BLOCK_SIZE, INFO_EXPORT, NbdClient, OPT_EXPORT_NAME, OPT_GO,
  OPT_LIST, OPT_SET_META_CONTEXT, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT,
  REP_SERVER, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE,
  STATE_HOLE, STATE_ZERO,
} from '../../../src/nbd/client.js';

/** One request as the fake server received it. */
interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
  data?: Buffer;
}

interface FakeOptions {
  /** Answer NBD_OPT_GO, NBD_OPT_STRUCTURED_REPLY and NBD_OPT_SET_META_CONTEXT (else ERR_UNSUP). */
  modern: boolean;
  exportName: string;
  /** Sends the fixed-newstyle flag in its greeting (a server without it cannot negotiate STARTTLS). */
  fixedNewstyle: boolean;
  size: number;
  flags: number;
  /** Answers a request by writing reply bytes to the socket; waits for `release` when it returns a promise. */
  onRequest(socket: Socket, request: Request, server: FakeServer): void | Promise<void>;
}

/** A tiny NBD server, enough to drive the client through each path. */
class FakeServer {
  readonly options: number[] = [];
  readonly requests: Request[] = [];
  private buffer = Buffer.alloc(0);
  private waiter: (() => void) | undefined;

  constructor(private readonly socket: Socket, private readonly opts: FakeOptions) {
    socket.on('data', (d: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, d]);
      const w = this.waiter;
      this.waiter = undefined;
      w?.();
    });
    socket.on('error', () => {});
    void this.run().catch(() => socket.destroy());
  }

  private async take(n: number): Promise<Buffer> {
    while (this.buffer.length < n) await new Promise<void>((resolve) => (this.waiter = resolve));
    const out = this.buffer.subarray(0, n);
    this.buffer = this.buffer.subarray(n);
    return out;
  }

  private optionReply(option: number, type: number, payload: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(0x3e889045565a9n, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(payload.length, 16);
    this.socket.write(Buffer.concat([h, payload]));
  }

  private async run(): Promise<void> {
    const hello = Buffer.alloc(18);
    hello.write('NBDMAGIC');
    hello.writeBigUInt64BE(0x49484156454f5054n, 8);
    hello.writeUInt16BE(this.opts.fixedNewstyle ? 3 : 2, 16);
    this.socket.write(hello);
    await this.take(4);
    for (;;) {
      const h = await this.take(16);
      const option = h.readUInt32BE(8);
      const data = await this.take(h.readUInt32BE(12));
      this.options.push(option);
      const { modern, exportName } = this.opts;
      if (option === OPT_EXPORT_NAME) {
        const reply = Buffer.alloc(10);
        reply.writeBigUInt64BE(BigInt(this.opts.size), 0);
        reply.writeUInt16BE(this.opts.flags, 8);
        this.socket.write(reply);
        break;
      } else if (!modern && option !== OPT_LIST) {
        this.optionReply(option, REP_ERR_UNSUP);
      } else if (option === OPT_STRUCTURED_REPLY) {
        this.optionReply(option, REP_ACK);
      } else if (option === OPT_SET_META_CONTEXT) {
        const ctx = Buffer.alloc(4 + 15);
        ctx.writeUInt32BE(7);
        ctx.write('base:allocation', 4);
        this.optionReply(option, REP_META_CONTEXT, ctx);
        this.optionReply(option, REP_ACK);
      } else if (option === OPT_GO) {
        const name = data.subarray(4, 4 + data.readUInt32BE(0)).toString();
        if (name !== exportName) {
          this.optionReply(option, REP_ERR_UNKNOWN, Buffer.from(`export '${name}' not present`));
          continue;
        }
        const exp = Buffer.alloc(12);
        exp.writeUInt16BE(INFO_EXPORT, 0);
        exp.writeBigUInt64BE(BigInt(this.opts.size), 2);
        exp.writeUInt16BE(this.opts.flags, 10);
        this.optionReply(option, REP_INFO, exp);
        const sizes = Buffer.alloc(14);
        sizes.writeUInt16BE(INFO_BLOCK_SIZE, 0);
        sizes.writeUInt32BE(1, 2);
        sizes.writeUInt32BE(4096, 6);
        sizes.writeUInt32BE(1024 * 1024, 10);
        this.optionReply(option, REP_INFO, sizes);
        this.optionReply(option, REP_ACK);
        break;
      } else if (option === OPT_LIST) {
        const entry = Buffer.alloc(4 + exportName.length);
        entry.writeUInt32BE(exportName.length);
        entry.write(exportName, 4);
        this.optionReply(option, REP_SERVER, entry);
        this.optionReply(option, REP_ACK);
      }
    }
    for (;;) {
      const h = await this.take(28);
      const request: Request = {
        flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8),
        offset: Number(h.readBigUInt64BE(16)), length: h.readUInt32BE(24),
      };
      if (request.type === CMD_WRITE) request.data = Buffer.from(await this.take(request.length));
      this.requests.push(request);
      if (request.type === CMD_DISC) return;
      void this.opts.onRequest(this.socket, request, this);
    }
  }
}

function simpleReply(socket: Socket, cookie: bigint, error = 0, data?: Buffer): void {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(0x67446698, 0);
  h.writeUInt32BE(error, 4);
  h.writeBigUInt64BE(cookie, 8);
  socket.write(data ? Buffer.concat([h, data]) : h);
}

function chunk(socket: Socket, cookie: bigint, type: number, payload: Buffer, done: boolean): void {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(0x668e33ef, 0);
  h.writeUInt16BE(done ? REPLY_FLAG_DONE : 0, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeUInt32BE(payload.length, 16);
  socket.write(Buffer.concat([h, payload]));
}

const u64 = (v: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
};
const u32s = (...values: number[]) => {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => b.writeUInt32BE(v, 4 * i));
  return b;
};

let dir: string;
let server: Server | undefined;
let fake: FakeServer | undefined;

function serve(opts: Partial<FakeOptions> & Pick<FakeOptions, 'onRequest'>): string {
  const path = join(dir, 'nbd.sock');
  server = createServer((socket) => {
    fake = new FakeServer(socket, { modern: true, exportName: 'disk', fixedNewstyle: true, size: 1 << 20, flags: EXPORT_HAS_FLAGS, ...opts });
  });
  server.listen(path);
  return path;
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'blkio-nbd-'));
});

afterEach(async () => {
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  server = undefined;
  fake = undefined;
  rmSync(dir, { recursive: true, force: true });
});

describe('NbdClient', () => {
  it('negotiates structured replies, base:allocation and GO with block sizes', async () => {
    const path = serve({ onRequest: () => {} });
    const client = await NbdClient.connect({ type: 'unix', path }, 'disk');
    expect(client.info).toMatchObject({ size: 1 << 20, structuredReplies: true, metaContext: 7, minBlock: 1, optBlock: 4096, maxBlock: 1 << 20 });
    expect(fake!.options).toEqual([OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT, OPT_GO]);
    await client.close();
  });

  it('never goes on without TLS when credentials were given', async () => {
    const refusing = serve({ modern: false, onRequest: () => {} });
    await expect(NbdClient.connect({ type: 'unix', path: refusing }, 'disk', 'base:allocation', true))
      .rejects.toThrow("Server don't support STARTTLS option");
    await new Promise((resolve) => server!.close(resolve));
    const notFixed = serve({ fixedNewstyle: false, onRequest: () => {} });
    await expect(NbdClient.connect({ type: 'unix', path: notFixed }, 'disk', 'base:allocation', true))
      .rejects.toThrow('Server does not support STARTTLS');
  });

  it('reports a missing export with the server message as a hint', async () => {
    const path = serve({ onRequest: () => {} });
    const error = await NbdClient.connect({ type: 'unix', path }, 'other').catch((e: unknown) => e);
    expect(error).toMatchObject({ message: 'Requested export not available', hints: ["server reported: export 'other' not present"] });
  });

  it('reads data and hole chunks into the buffer, in any order', async () => {
    const path = serve({
      onRequest(socket, r) {
        if (r.type !== CMD_READ) return;
        chunk(socket, r.cookie, REPLY_TYPE_OFFSET_HOLE, Buffer.concat([u64(r.offset + 4), u32s(4)]), false);
        chunk(socket, r.cookie, REPLY_TYPE_OFFSET_DATA, Buffer.concat([u64(r.offset), Buffer.alloc(4, 0xaa)]), true);
      },
    });
    const client = await NbdClient.connect({ type: 'unix', path }, 'disk');
    const buf = new Uint8Array(8).fill(0x55);
    await client.read(100, 8, buf);
    expect([...buf]).toEqual([0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0, 0]);
    await client.close();
    // The server reads the disconnect request after the client has let go.
    await expect.poll(() => fake!.requests.at(-1)?.type).toBe(CMD_DISC);
  });

  it('fails a request with the errno of an error chunk and keeps the connection', async () => {
    const path = serve({
      onRequest(socket, r) {
        if (r.offset === 0) {
          chunk(socket, r.cookie, REPLY_TYPE_ERROR, Buffer.concat([u32s(28), Buffer.from([0, 0])]), true);
        } else {
          chunk(socket, r.cookie, REPLY_TYPE_OFFSET_DATA, Buffer.concat([u64(r.offset), Buffer.alloc(r.length, 1)]), true);
        }
      },
    });
    const client = await NbdClient.connect({ type: 'unix', path }, 'disk');
    await expect(client.read(0, 4, new Uint8Array(4))).rejects.toMatchObject({ code: 'ENOSPC' });
    await client.read(512, 4, new Uint8Array(4));
    await client.close();
  });

  it('answers block status from the first extent', async () => {
    const path = serve({
      onRequest(socket, r) {
        chunk(socket, r.cookie, REPLY_TYPE_BLOCK_STATUS, u32s(7, 4096, STATE_HOLE | STATE_ZERO, 4096, 0), true);
      },
    });
    const client = await NbdClient.connect({ type: 'unix', path }, 'disk');
    expect(await client.blockStatus(0, 65536)).toEqual({ length: 4096, flags: STATE_HOLE | STATE_ZERO });
    expect(fake!.requests[0]).toMatchObject({ type: CMD_BLOCK_STATUS, flags: CMD_FLAG_REQ_ONE, length: 65536 });
    await client.close();
  });

  it('keeps several requests in flight, matched to their replies by cookie', async () => {
    const held: Request[] = [];
    const path = serve({
      onRequest(socket, r) {
        held.push(r);
        if (held.length < 3) return;
        // Answered in reverse order.
        for (const h of held.reverse()) simpleReply(socket, h.cookie);
      },
      flags: EXPORT_HAS_FLAGS | EXPORT_SEND_FUA | EXPORT_SEND_WRITE_ZEROES,
    });
    const client = await NbdClient.connect({ type: 'unix', path }, 'disk');
    await Promise.all([
      client.write(0, Buffer.from('abcd'), 4, true),
      client.writeZeroes(4096, 4096, CMD_FLAG_NO_HOLE),
      client.write(8192, Buffer.from('efgh'), 2, false),
    ]);
    const [a, b, c] = fake!.requests;
    expect(a).toMatchObject({ type: CMD_WRITE, flags: CMD_FLAG_FUA, data: Buffer.from('abcd') });
    expect(b).toMatchObject({ type: CMD_WRITE_ZEROES, flags: CMD_FLAG_NO_HOLE, offset: 4096, length: 4096 });
    expect(c).toMatchObject({ type: CMD_WRITE, flags: 0, data: Buffer.from('ef') });
    expect(new Set([a!.cookie, b!.cookie, c!.cookie]).size).toBe(3);
    await client.close();
  });

  it('falls back to LIST and EXPORT_NAME with simple replies where the server lacks GO', async () => {
    const path = serve({
      modern: false,
      onRequest(socket, r) {
        simpleReply(socket, r.cookie, 0, Buffer.alloc(r.length, 7));
      },
    });
    const client = await NbdClient.connect({ type: 'unix', path }, 'disk');
    expect(fake!.options).toEqual([OPT_STRUCTURED_REPLY, OPT_GO, OPT_LIST, OPT_EXPORT_NAME]);
    expect(client.info).toMatchObject({ size: 1 << 20, structuredReplies: false, metaContext: undefined });
    const buf = new Uint8Array(3);
    await client.read(0, 3, buf);
    expect([...buf]).toEqual([7, 7, 7]);
    await client.close();
    const missing = await NbdClient.connect({ type: 'unix', path }, 'other').catch((e: unknown) => e);
    expect(missing).toMatchObject({ message: "No export with name 'other' available" });
  });

  it('fails requests waiting and later ones with EIO when the server goes away', async () => {
    const path = serve({
      onRequest(socket) {
        socket.destroy();
      },
    });
    const client = await NbdClient.connect({ type: 'unix', path }, 'disk');
    await expect(client.read(0, 4, new Uint8Array(4))).rejects.toMatchObject({ code: 'EIO' });
    await expect(client.flush()).rejects.toMatchObject({ code: 'EIO' });
    await client.close();
  });

  it('reports a refused connection as QEMU', async () => {
    const error = await NbdClient.connect({ type: 'unix', path: join(dir, 'none.sock') }, '').catch((e: unknown) => e);
    expect(error).toMatchObject({ message: `Failed to connect to '${join(dir, 'none.sock')}': No such file or directory` });
  });
});
