/**
 * The `nbd` protocol: an export of an NBD server as a node, named as QEMU 7.2 names it
 * (`nbd://host[:port]/export`, `nbd+unix:///export?socket=PATH`, `nbd:HOST:PORT[:exportname=NAME]`,
 * `nbd:unix:PATH[:exportname=NAME]`, or the options `server.*` and `export`). The wire protocol
 * is src/nbd/client.ts. blkio speaks plain NBD only: no TLS, no reconnection.
 */
import { BlkioError, toBlkioError } from '../errors.js';
import type { BlockDriver } from '../block/driver.js';
import { REQ_FUA, REQ_MAY_UNMAP, REQ_NO_FALLBACK, STATUS_DATA, STATUS_OFFSET_VALID, STATUS_ZERO } from '../block/flags.js';
import type { FlatOptions } from '../options/types.js';
import { unflattenOptions } from '../options/json.js';
import { visitQapiObject, type QapiObject } from '../options/qapi-input.js';
import { tlsCredsEndpoint } from '../block/inert-objects.js';
import {
  CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, EXPORT_READ_ONLY, EXPORT_SEND_FAST_ZERO, EXPORT_SEND_FLUSH,
  EXPORT_SEND_FUA, EXPORT_SEND_TRIM, EXPORT_SEND_WRITE_ZEROES, MAX_BUFFER_SIZE, MAX_STRING_SIZE, NbdClient,
  STATE_HOLE, STATE_ZERO, type NbdAddress,
} from '../nbd/client.js';

interface NbdState {
  client: NbdClient;
  /** Alignment of requests to the server (NBD_INFO_BLOCK_SIZE's minimum, or QEMU's guess). */
  alignment: number;
  /** `x-dirty-bitmap=qemu:allocation-depth`: depths beyond 2 read as 2. */
  allocationDepth: boolean;
}

const NBD_DEFAULT_PORT = '10809';
const INT_MAX = 2 ** 31 - 1;

const optional = (name: string, type: 'str' | 'bool' | 'int') => ({ name, type, optional: true });

/** QEMU's QAPI type SocketAddress, which the `server.*` options are checked against. */
export const SOCKET_ADDRESS: QapiObject = {
  kind: 'object',
  members: [{ name: 'type', type: { kind: 'enum', values: ['inet', 'unix', 'vsock', 'fd'] } }],
  union: {
    tag: 'type',
    variants: {
      inet: [
        { name: 'host', type: 'str' }, { name: 'port', type: 'str' }, optional('numeric', 'bool'), optional('to', 'int'),
        optional('ipv4', 'bool'), optional('ipv6', 'bool'), optional('keep-alive', 'bool'), optional('mptcp', 'bool'),
      ],
      unix: [{ name: 'path', type: 'str' }, optional('abstract', 'bool'), optional('tight', 'bool')],
      vsock: [{ name: 'cid', type: 'str' }, { name: 'port', type: 'str' }],
      fd: [{ name: 'str', type: 'str' }],
    },
  },
};

/** Options that name the server or export; none may come with a filename. */
const ADDRESS_KEYS = ['host', 'port', 'path', 'export'];

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

/** `%XX` escapes decoded, as QEMU's URI parser does (a `+` stays a `+`). */
function unescape(text: string): string {
  return text.replace(/%([0-9a-fA-F]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/** `nbd[+tcp]://host[:port][/export]` and `nbd+unix:///[export]?socket=PATH` into options. */
function parseUri(filename: string, options: Record<string, unknown>): void {
  const bad = () => invalid('No valid URL specified');
  const match = /^([a-z+]+):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?$/i.exec(filename);
  if (!match) throw bad();
  const [, scheme, authority, path, query] = match as unknown as [string, string, string, string, string | undefined];
  const unix = scheme === 'nbd+unix';
  if (!unix && scheme !== 'nbd' && scheme !== 'nbd+tcp') throw bad();
  const exportName = unescape(path.startsWith('/') ? path.slice(1) : path);
  const params = query === undefined ? [] : query.split(/[&;]/).filter((p) => p !== '');
  if (params.length > 1 || unix !== (params.length === 1)) throw bad();
  const hostPort = /^(?:\[([^\]]*)\]|([^:]*))(?::(\d*))?$/.exec(authority);
  if (!hostPort) throw bad();
  const host = unescape(hostPort[1] ?? hostPort[2] ?? '');
  const port = hostPort[3];
  if (exportName) options.export = exportName;
  if (unix) {
    const [key, ...value] = params[0]!.split('=');
    if (host || port || key !== 'socket' || value.length === 0) throw bad();
    options['server.type'] = 'unix';
    options['server.path'] = unescape(value.join('='));
  } else {
    if (!host) throw bad();
    options['server.type'] = 'inet';
    options['server.host'] = host;
    options['server.port'] = port ? String(Number(port)) : NBD_DEFAULT_PORT;
  }
}

/** `nbd:unix:PATH[:exportname=NAME]` and `nbd:HOST:PORT[:exportname=NAME]` into options. */
function parseLegacyFilename(filename: string, options: Record<string, unknown>): void {
  const marker = ':exportname=';
  let spec = filename;
  const at = spec.indexOf(marker);
  if (at >= 0) {
    // QEMU ignores the whole name when the export name is empty.
    if (at + marker.length === spec.length) return;
    options.export = spec.slice(at + marker.length);
    spec = spec.slice(0, at);
  }
  if (!spec.startsWith('nbd:')) throw invalid("File name string for NBD must start with 'nbd:'");
  const hostSpec = spec.slice(4);
  if (hostSpec === '') return;
  if (hostSpec.startsWith('unix:')) {
    options['server.type'] = 'unix';
    options['server.path'] = hostSpec.slice(5);
    return;
  }
  const inet = /^(?:\[([^\]]+)\]|([^:[\]]{0,64})):([^,]{1,32})(?:,.*)?$/.exec(hostSpec);
  if (!inet) throw invalid(`error parsing address '${hostSpec}'`);
  options['server.type'] = 'inet';
  options['server.host'] = inet[1] ?? inet[2];
  options['server.port'] = inet[3];
}

/** `host`, `port` and `path` (the old option names) as `server.*`; QEMU's checks and texts. */
function legacyAddress(opts: Record<string, unknown>, remaining: FlatOptions): void {
  const { host, port, path } = opts as { host?: string; port?: string; path?: string };
  if (host === undefined && port === undefined && path === undefined) return;
  if (Object.keys(remaining).some((k) => k.startsWith('server.'))) throw invalid("Cannot use 'server' and path/host/port at the same time");
  if (path !== undefined && host !== undefined) throw invalid('path and host may not be used at the same time');
  if (path !== undefined) {
    if (port !== undefined) throw invalid('port may not be used without host');
    Object.assign(remaining, { 'server.type': 'unix', 'server.path': path });
  } else if (host !== undefined) {
    Object.assign(remaining, { 'server.type': 'inet', 'server.host': host, 'server.port': port ?? NBD_DEFAULT_PORT });
  }
}

/** The address the `server.*` options give, checked as QEMU checks a SocketAddress. */
function serverAddress(server: FlatOptions): { address: NbdAddress; exactHost: boolean } {
  if (Object.keys(server).length === 0) throw invalid('NBD server address missing');
  const tree = visitQapiObject(SOCKET_ADDRESS, unflattenOptions(server), 'keyval');
  switch (tree.type) {
    case 'unix':
      return { address: { type: 'unix', path: tree.path as string, abstract: tree.abstract === true }, exactHost: true };
    case 'inet':
      return {
        address: { type: 'inet', host: tree.host as string, port: tree.port as string },
        exactHost: tree.ipv4 === undefined && tree.ipv6 === undefined && tree.to === undefined,
      };
    default:
      throw new BlkioError('ENOTSUP', `NBD server addresses of type '${tree.type as string}' are not supported`);
  }
}

/** The filename QEMU gives an NBD node: a URI naming the address and the export. */
function exactFilename(address: NbdAddress, exportName: string | undefined, exactHost: boolean): string {
  if (address.type === 'unix') {
    return exportName === undefined ? `nbd+unix://?socket=${address.path}` : `nbd+unix:///${exportName}?socket=${address.path}`;
  }
  if (!exactHost) return '';
  const base = `nbd://${address.host}:${address.port}`;
  return exportName === undefined ? base : `${base}/${exportName}`;
}

export const nbdDriver: BlockDriver<NbdState> = {
  name: 'nbd',
  kind: 'protocol',
  protocolPrefix: 'nbd',
  otherProtocolPrefixes: ['nbd+tcp', 'nbd+unix'],
  // QEMU finds the driver of the last of its three names when asked for `nbd` by format.
  protocolName: 'nbd+unix',
  options: {
    host: { type: 'string' },
    port: { type: 'string' },
    path: { type: 'string' },
    export: { type: 'string' },
    'tls-creds': { type: 'string' },
    'tls-hostname': { type: 'string' },
    'x-dirty-bitmap': { type: 'string' },
    'reconnect-delay': { type: 'number' },
    'open-timeout': { type: 'number' },
  },

  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off)' },
  ],

  /**
   * An export exists already: "creating" one checks that it is large enough and clears its
   * first sector (so no old header is probed there), as QEMU's generic creation does.
   */
  async create(file, request) {
    const prealloc = String(request.options.preallocation ?? 'off');
    if (prealloc !== 'off') throw new BlkioError('ENOTSUP', `Unsupported preallocation mode '${prealloc}'`);
    await file.truncate(request.size, false);
    if (request.size === 0) return;
    await file.writeZeroes(0, Math.min(request.size, 512), REQ_MAY_UNMAP).catch((e: unknown) => {
      throw toBlkioError(e).prepend("Failed to clear the new image's first sector: ");
    });
  },

  parseFilename(filename, options) {
    const conflict = Object.keys(options).find((k) => ADDRESS_KEYS.includes(k) || k.startsWith('server.'));
    if (conflict !== undefined) throw invalid(`Option '${conflict}' cannot be used with a file name`);
    if (filename.includes('://')) parseUri(filename, options);
    else parseLegacyFilename(filename, options);
  },

  async open(node, ctx) {
    const opts = ctx.opts;
    legacyAddress(opts, ctx.remaining);
    const { address, exactHost } = serverAddress(ctx.takeOptions('server'));
    const exportName = opts.export as string | undefined;
    if (exportName !== undefined && Buffer.byteLength(exportName) > MAX_STRING_SIZE) throw invalid('export name too long to send to server');
    const tlsCreds = opts['tls-creds'] as string | undefined;
    if (tlsCreds !== undefined) {
      if (!ctx.layer.objects.has(tlsCreds)) throw invalid(`No TLS credentials with id '${tlsCreds}'`);
      const endpoint = tlsCredsEndpoint(ctx.layer.objects.get(tlsCreds));
      if (endpoint === undefined) throw invalid(`Object with id '${tlsCreds}' is not TLS credentials`);
      if (endpoint !== 'client') throw invalid('Expected TLS credentials for a client endpoint');
    }
    const bitmap = opts['x-dirty-bitmap'] as string | undefined;
    if (bitmap !== undefined && Buffer.byteLength(bitmap) > MAX_STRING_SIZE) throw invalid('x-dirty-bitmap query too long to send to server');

    const client = await NbdClient.connect(address, exportName ?? '', bitmap ?? 'base:allocation', tlsCreds !== undefined);
    const info = client.info;
    // QEMU loses the reason of these two failures and reports only the errno.
    const refuse = async (code: 'EINVAL' | 'EACCES') => {
      await client.close();
      throw new BlkioError(code, `Could not open image: ${new BlkioError(code).message}`);
    };
    if (bitmap !== undefined && info.metaContext === undefined) await refuse('EINVAL');
    if ((info.flags & EXPORT_READ_ONLY) && !node.readOnly) {
      if (!ctx.flag('auto-read-only')) await refuse('EACCES');
      node.readOnly = true;
    }
    // Empty where the address has no URI (inet with ipv4=on): the node then has a json: name.
    node.filename = exactFilename(address, exportName, exactHost);
    const alignment = info.minBlock || (info.size % 512 !== 0 || info.metaContext !== undefined ? 1 : 512);
    return { client, alignment, allocationDepth: bitmap === 'qemu:allocation-depth' };
  },

  // A failed open is closed too, before there is a state.
  close: async (node) => node.state?.client.close(),

  async reopen(node) {
    if (!node.readOnly && node.state.client.info.flags & EXPORT_READ_ONLY) {
      throw new BlkioError('EACCES', "Can't reopen read-only NBD mount as read/write");
    }
  },

  refreshLimits(node) {
    const { info } = node.state.client;
    const max = Math.min(MAX_BUFFER_SIZE, info.maxBlock || MAX_BUFFER_SIZE);
    const alignment = node.state.alignment;
    node.limits.requestAlignment = alignment;
    node.limits.maxTransfer = max;
    node.limits.maxZeroes = max;
    node.limits.maxDiscard = Math.floor(INT_MAX / alignment) * alignment;
  },

  supportedWriteFlags: (node) => (node.state.client.info.flags & EXPORT_SEND_FUA ? REQ_FUA : 0),
  supportedZeroFlags(node) {
    const flags = node.state.client.info.flags;
    let supported = flags & EXPORT_SEND_FUA ? REQ_FUA : 0;
    if (flags & EXPORT_SEND_WRITE_ZEROES) {
      supported |= REQ_MAY_UNMAP;
      if (flags & EXPORT_SEND_FAST_ZERO) supported |= REQ_NO_FALLBACK;
    }
    return supported;
  },

  getLength: (node) => node.state.client.info.size,

  read: (node, offset, bytes, buf) => node.state.client.read(offset, bytes, buf),

  write: (node, offset, bytes, buf, flags) => node.state.client.write(offset, buf, bytes, (flags & REQ_FUA) !== 0),

  async writeZeroes(node, offset, bytes, flags) {
    const { client } = node.state;
    if (!(client.info.flags & EXPORT_SEND_WRITE_ZEROES)) throw new BlkioError('ENOTSUP');
    let cmdFlags = flags & REQ_FUA ? CMD_FLAG_FUA : 0;
    if (!(flags & REQ_MAY_UNMAP)) cmdFlags |= CMD_FLAG_NO_HOLE;
    if (flags & REQ_NO_FALLBACK) cmdFlags |= CMD_FLAG_FAST_ZERO;
    await client.writeZeroes(offset, bytes, cmdFlags);
  },

  async discard(node, offset, bytes) {
    const { client } = node.state;
    if (client.info.flags & EXPORT_SEND_TRIM && bytes > 0) await client.trim(offset, bytes);
  },

  async flush(node) {
    const { client } = node.state;
    if (client.info.flags & EXPORT_SEND_FLUSH) await client.flush();
  },

  /** An export has a fixed size: shrinking is fine where the size needs not be exact, as QEMU. */
  async truncate(node, size, exact) {
    const current = node.state.client.info.size;
    if (size !== current && exact) throw new BlkioError('ENOTSUP', 'Cannot resize NBD nodes');
    if (size > current) throw invalid('Cannot grow NBD nodes');
  },

  /** The server's `base:allocation` extents; everything is data where it has none. */
  async blockStatus(node, offset, bytes) {
    const { client, alignment, allocationDepth } = node.state;
    const { info } = client;
    if (info.metaContext === undefined) return { status: STATUS_DATA | STATUS_OFFSET_VALID, pnum: bytes, map: offset, file: node };
    const length = Math.min(bytes, info.size - offset, Math.floor(INT_MAX / alignment) * alignment);
    const extent = await client.blockStatus(offset, length);
    let flags = allocationDepth && extent.flags > 2 ? 2 : extent.flags;
    let pnum = extent.length;
    // An extent not aligned to the server's own block size: QEMU rounds it (the whole block
    // becomes data when the extent is smaller than one).
    if (info.minBlock && pnum % info.minBlock !== 0) {
      if (pnum > info.minBlock) pnum -= pnum % info.minBlock;
      else {
        pnum = info.minBlock;
        flags = 0;
      }
    }
    const status = (flags & STATE_HOLE ? 0 : STATUS_DATA) | (flags & STATE_ZERO ? STATUS_ZERO : 0) | STATUS_OFFSET_VALID;
    return { status, pnum, map: offset, file: node };
  },

};
