/**
 * The user-creatable object types of QEMU 7.2's tools that no block node here uses (TLS
 * credentials, authorization lists, the main loop, thread contexts, PR helpers, keyring
 * secrets): `--object` makes them as QEMU does, with its property checks (the QAPI schema, then
 * the setters) and the checks its completion makes of the host, so that a command line fails or
 * works as with qemu-img and qemu-io. Nothing further uses them.
 */
import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { BlkioError, toBlkioError } from '../errors.js';
import { qdictKeyOrder } from '../options/json.js';
import { visitQapiObject, type QapiMember, type QapiObject, type QapiType } from '../options/qapi-input.js';
import type { OptionTree } from '../options/types.js';
import type { ObjectRegistry } from './objects.js';
import { lazyBuiltin } from '../lazy-builtin.js';

const crypto = lazyBuiltin<typeof import('node:crypto')>('node:crypto');

/** A type: its `TYPE,help` lines (name, type), its QAPI members, the setter checks and the completion. */
export interface InertObjectType {
  properties: ReadonlyArray<readonly [string, string]>;
  /** Absent for a type QEMU lists but its object_add refuses (`authz-list-file`). */
  members?: readonly QapiMember[];
  /** A property setter's check, for one property as given. */
  setter?(name: string, value: unknown): void;
  /** Runs once the object is registered among `objects` (itself included). */
  complete?(props: OptionTree, objects: ReadonlyMap<string, unknown>): void;
}

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

const optional = (name: string, type: QapiType): QapiMember => ({ name, type, optional: true });
const enumOf = (...values: string[]): QapiType => ({ kind: 'enum', values });

const TLS_MEMBERS = [
  optional('verify-peer', 'bool'), optional('dir', 'str'), optional('endpoint', enumOf('client', 'server')),
  optional('priority', 'str'),
];
const TLS_PROPERTIES = [['dir', 'string'], ['endpoint', 'QCryptoTLSCredsEndpoint'], ['priority', 'string'], ['verify-peer', 'bool']] as const;

/** QEMU marks `loaded` read-only: setting it fails, whatever the value. */
function loadedNotWritable(type: string): InertObjectType['setter'] {
  return (name) => {
    if (name === 'loaded') throw invalid(`Property '${type}.loaded' is not writable`);
  };
}

/** qcrypto_tls_creds_get_path: a credentials file must be readable (optional ones may be missing). */
function credentialsFile(dir: string, name: string, required: boolean): string | undefined {
  const path = `${dir}/${name}`;
  try {
    accessSync(path, constants.R_OK);
    return path;
  } catch (e) {
    const error = toBlkioError(e);
    if (error.code === 'ENOENT' && !required) return undefined;
    throw invalid(`Unable to access credentials ${path}: ${error.strerror}`);
  }
}

function credentialsDir(props: OptionTree): string {
  if (props.dir === undefined) throw invalid("Missing 'dir' property value");
  return props.dir as string;
}

/** The CPUs a list like `0-3,8` names. */
function cpuList(text: string): Set<number> {
  const cpus = new Set<number>();
  for (const range of text.trim().split(',').filter(Boolean)) {
    const [first, last = first] = range.split('-').map(Number);
    for (let cpu = first; cpu <= last; cpu++) cpus.add(cpu);
  }
  return cpus;
}

function readCpuList(path: string, line?: RegExp): Set<number> {
  try {
    const text = readFileSync(path, 'latin1');
    return cpuList(line ? (line.exec(text)?.[1] ?? '') : text);
  } catch {
    return new Set();
  }
}

/** The thread's new affinity must hold a CPU the process may run on, or sched_setaffinity fails. */
function setAffinity(cpus: Iterable<number>): void {
  const allowed = readCpuList('/proc/self/status', /^Cpus_allowed_list:\s*(\S*)/m);
  for (const cpu of cpus) if (allowed.has(cpu)) return;
  throw invalid('Setting CPU affinity failed: Invalid argument');
}

/** Whether the kernel shows key `serial` to this process (/proc/keys lists the keys it may see). */
function keyVisible(serial: number): boolean {
  const hex = (serial >>> 0).toString(16).padStart(8, '0');
  try {
    return readFileSync('/proc/keys', 'latin1').split('\n').some((line) => line.startsWith(`${hex} `));
  } catch {
    return false;
  }
}

/** An object of one of these types, as made. */
export class InertObject {
  constructor(readonly type: string, readonly props: OptionTree) {}
}

const TLS_CREDS_TYPES = ['tls-creds-anon', 'tls-creds-psk', 'tls-creds-x509', 'tls-cipher-suites'];

/** The endpoint of TLS credentials (QEMU's TYPE_QCRYPTO_TLS_CREDS); undefined for any other object. */
export function tlsCredsEndpoint(object: unknown): string | undefined {
  if (!(object instanceof InertObject) || !TLS_CREDS_TYPES.includes(object.type)) return undefined;
  return (object.props.endpoint as string | undefined) ?? 'client';
}

export const INERT_OBJECT_TYPES: Record<string, InertObjectType> = {
  'authz-list': {
    properties: [['policy', 'QAuthZListPolicy'], ['rules', 'QAuthZListRule']],
    members: [
      optional('policy', enumOf('deny', 'allow')),
      optional('rules', {
        kind: 'array',
        element: {
          kind: 'object',
          members: [{ name: 'match', type: 'str' }, { name: 'policy', type: enumOf('deny', 'allow') }, optional('format', enumOf('exact', 'glob'))],
        },
      }),
    ],
  },
  'authz-list-file': { properties: [['filename', 'string'], ['refresh', 'bool']] },
  'authz-simple': { properties: [['identity', 'string']], members: [{ name: 'identity', type: 'str' }] },
  'main-loop': {
    properties: [['aio-max-batch', 'int'], ['thread-pool-max', 'int'], ['thread-pool-min', 'int']],
    members: [optional('aio-max-batch', 'int'), optional('thread-pool-min', 'int'), optional('thread-pool-max', 'int')],
    setter(name, value) {
      if ((value as number) < 0) throw invalid(`${name} value must be in range [0, 9223372036854775807]`);
    },
    complete(props, objects) {
      const min = (props['thread-pool-min'] as number | undefined) ?? 0;
      const max = (props['thread-pool-max'] as number | undefined) ?? 64;
      if (min > max || max === 0) throw invalid('bad thread-pool-min/thread-pool-max values');
      const loops = [...objects.values()].filter((o) => o instanceof InertObject && o.type === 'main-loop');
      if (loops.length > 1) throw invalid('only one main-loop instance allowed');
    },
  },
  'pr-manager-helper': {
    properties: [['path', 'string']],
    members: [{ name: 'path', type: 'str' }],
    complete(props) {
      // connect(2) to a path that is no listening socket: it is missing, or refused.
      const path = props.path as string;
      let reason = 'Connection refused';
      try {
        statSync(path);
      } catch (e) {
        reason = toBlkioError(e).strerror;
      }
      throw invalid(`Failed to connect to '${path}': ${reason}`);
    },
  },
  secret_keyring: {
    properties: [['format', 'QCryptoSecretFormat'], ['iv', 'string'], ['keyid', 'string'], ['serial', 'int32_t']],
    members: [
      optional('loaded', 'bool'), optional('format', enumOf('raw', 'base64')), optional('keyid', 'str'), optional('iv', 'str'),
      { name: 'serial', type: 'int32' },
    ],
    setter: loadedNotWritable('secret_keyring'),
    complete(props) {
      const serial = props.serial as number;
      // Node cannot read a key's payload: a key the kernel shows cannot be loaded here either.
      const reason = keyVisible(serial) ? 'Operation not supported' : 'Required key not available';
      throw invalid(`Unable to read serial key ${(serial >>> 0).toString(16).padStart(8, '0')}: ${reason}`);
    },
  },
  'thread-context': {
    properties: [['cpu-affinity', 'int'], ['node-affinity', 'int']],
    members: [optional('cpu-affinity', { kind: 'array', element: 'uint16' }), optional('node-affinity', { kind: 'array', element: 'uint16' })],
    complete(props) {
      const cpus = props['cpu-affinity'] as number[] | undefined;
      const nodes = props['node-affinity'] as number[] | undefined;
      if (cpus && nodes) throw invalid('Mixing CPU and node affinity not supported');
      if (cpus) setAffinity(cpus);
      if (nodes) {
        const nodeCpus = nodes.flatMap((n) => [...readCpuList(`/sys/devices/system/node/node${n}/cpulist`)]);
        if (nodeCpus.length === 0) throw invalid('The nodes select no CPUs');
        setAffinity(nodeCpus);
      }
    },
  },
  'tls-cipher-suites': {
    properties: TLS_PROPERTIES,
    members: TLS_MEMBERS,
    complete(props) {
      if (props.priority === undefined) throw invalid("'priority' property is not set");
    },
  },
  'tls-creds-anon': {
    properties: TLS_PROPERTIES,
    members: [...TLS_MEMBERS, optional('loaded', 'bool')],
    setter: loadedNotWritable('tls-creds-anon'),
  },
  'tls-creds-psk': {
    properties: [...TLS_PROPERTIES, ['username', 'string']],
    members: [...TLS_MEMBERS, optional('loaded', 'bool'), optional('username', 'str')],
    setter: loadedNotWritable('tls-creds-psk'),
    complete(props) {
      const file = credentialsFile(credentialsDir(props), 'keys.psk', true)!;
      if (props.endpoint === 'server') return;
      const username = (props.username as string | undefined) ?? 'qemu';
      const key = readFileSync(file, 'latin1').split('\n').find((line) => line.startsWith(`${username}:`))?.slice(username.length + 1);
      if (key === undefined) throw invalid(`Username ${username} not found in PSK file ${file}`);
      if (!/^([0-9a-fA-F]{2})+$/.test(key.trim())) throw invalid('Cannot set PSK client credentials: Error in parsing.');
    },
  },
  'tls-creds-x509': {
    properties: [...TLS_PROPERTIES, ['passwordid', 'string'], ['sanity-check', 'bool']],
    members: [...TLS_MEMBERS, optional('loaded', 'bool'), optional('sanity-check', 'bool'), optional('passwordid', 'str')],
    setter: loadedNotWritable('tls-creds-x509'),
    complete(props) {
      const dir = credentialsDir(props);
      // Every file is looked for before any is read.
      const caFile = credentialsFile(dir, 'ca-cert.pem', true)!;
      if (props.endpoint === 'server') {
        credentialsFile(dir, 'server-cert.pem', true);
        credentialsFile(dir, 'server-key.pem', true);
      }
      const pem = readFileSync(caFile, 'latin1');
      const certificates = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
      const valid = certificates.some((cert) => {
        try {
          return Boolean(new (crypto().X509Certificate)(cert));
        } catch {
          return false;
        }
      });
      if (!valid) throw invalid(`Unable to import CA certificate list ${caFile}`);
    },
  },
};

/**
 * Make an object of one of these types from its properties (`typed`: from JSON): the QAPI
 * checks, then the setters in QDict order; the completion runs once it is registered.
 */
export function createInertObject(
  type: string, objectType: InertObjectType, props: OptionTree, typed: boolean,
): { object: InertObject; complete: (registry: ObjectRegistry) => void } {
  const schema: QapiObject = { kind: 'object', members: objectType.members! };
  const visited = visitQapiObject(schema, props, typed ? 'json' : 'keyval');
  for (const key of qdictKeyOrder(Object.keys(visited))) objectType.setter?.(key, visited[key]);
  return { object: new InertObject(type, visited), complete: (registry) => objectType.complete?.(visited, registry.objects) };
}
