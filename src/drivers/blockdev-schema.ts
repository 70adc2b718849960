/**
 * QEMU 7.2's QAPI type BlockdevOptions (what -blockdev, blockdev-add and qemu-storage-daemon's
 * --blockdev take), for checking `--blockdev` definitions before the block layer opens them.
 * Every driver name of QEMU's BlockdevDriver enum is valid; the members are described for the
 * drivers blkio has and for those whose members are just `file` (and `backing`), so that those
 * are checked too. Other drivers' members go unchecked (the block layer then refuses the driver).
 */
import type { QapiAlternate, QapiEnum, QapiMember, QapiObject } from '../options/qapi-input.js';
import { BLKDEBUG_EVENTS } from './blkdebug.js';
import { SOCKET_ADDRESS } from './nbd.js';

const enumOf = (...values: string[]): QapiEnum => ({ kind: 'enum', values });
const optional = (name: string, type: QapiMember['type']): QapiMember => ({ name, type, optional: true });
const required = (name: string, type: QapiMember['type']): QapiMember => ({ name, type });

/** QEMU 7.2's BlockdevDriver enum (as built for Debian). */
export const BLOCKDEV_DRIVERS = [
  'blkdebug', 'blklogwrites', 'blkreplay', 'blkverify', 'bochs', 'cloop', 'compress', 'copy-before-write',
  'copy-on-read', 'dmg', 'file', 'snapshot-access', 'ftp', 'ftps', 'gluster', 'host_cdrom', 'host_device', 'http',
  'https', 'iscsi', 'luks', 'nbd', 'nfs', 'null-aio', 'null-co', 'nvme', 'parallels', 'preallocate', 'qcow',
  'qcow2', 'qed', 'quorum', 'raw', 'rbd', 'replication', 'ssh', 'throttle', 'vdi', 'vhdx', 'vmdk', 'vpc', 'vvfat',
];


/** The whole union; its variants refer back to it through BlockdevRef. */
export const BLOCKDEV_OPTIONS: QapiObject = {
  kind: 'object',
  members: [
    required('driver', enumOf(...BLOCKDEV_DRIVERS)),
    optional('node-name', 'str'),
    optional('discard', enumOf('ignore', 'unmap')),
    optional('cache', { kind: 'object', members: [optional('direct', 'bool'), optional('no-flush', 'bool')] }),
    optional('read-only', 'bool'),
    optional('auto-read-only', 'bool'),
    optional('force-share', 'bool'),
    optional('detect-zeroes', enumOf('off', 'on', 'unmap')),
  ],
};

const BLOCKDEV_REF: QapiAlternate = { kind: 'alternate', name: 'BlockdevRef', object: BLOCKDEV_OPTIONS, string: 'str' };
const BLOCKDEV_REF_OR_NULL: QapiAlternate = { ...BLOCKDEV_REF, name: 'BlockdevRefOrNull', acceptsNull: true };

const GENERIC_FORMAT = [required('file', BLOCKDEV_REF)];
const GENERIC_COW_FORMAT = [...GENERIC_FORMAT, optional('backing', BLOCKDEV_REF_OR_NULL)];

const FILE = [
  required('filename', 'str'),
  optional('pr-manager', 'str'),
  optional('locking', enumOf('auto', 'on', 'off')),
  optional('aio', enumOf('threads', 'native', 'io_uring')),
  optional('aio-max-batch', 'int'),
  optional('drop-cache', 'bool'),
  optional('x-check-cache-dropped', 'bool'),
];

const NULL = [optional('size', 'int'), optional('latency-ns', 'uint64'), optional('read-zeroes', 'bool')];

const BLKDEBUG_EVENT = enumOf(...BLKDEBUG_EVENTS);
const BLOCK_PERMISSIONS = { kind: 'array', element: enumOf('consistent-read', 'write', 'write-unchanged', 'resize') } as const;

const BLKDEBUG = [
  required('image', BLOCKDEV_REF),
  optional('config', 'str'),
  optional('align', 'int'),
  optional('max-transfer', 'int32'),
  optional('opt-write-zero', 'int32'),
  optional('max-write-zero', 'int32'),
  optional('opt-discard', 'int32'),
  optional('max-discard', 'int32'),
  optional('inject-error', {
    kind: 'array',
    element: {
      kind: 'object',
      members: [
        required('event', BLKDEBUG_EVENT),
        optional('state', 'int'),
        optional('iotype', enumOf('read', 'write', 'write-zeroes', 'discard', 'flush', 'block-status')),
        optional('errno', 'int'),
        optional('sector', 'int'),
        optional('once', 'bool'),
        optional('immediately', 'bool'),
      ],
    },
  }),
  optional('set-state', {
    kind: 'array',
    element: { kind: 'object', members: [required('event', BLKDEBUG_EVENT), optional('state', 'int'), required('new_state', 'int')] },
  }),
  optional('take-child-perms', BLOCK_PERMISSIONS),
  optional('unshare-child-perms', BLOCK_PERMISSIONS),
];

const OVERLAP_CHECK_MODE = enumOf('none', 'constant', 'cached', 'all');
const OVERLAP_CHECK_FLAGS = [
  'main-header', 'active-l1', 'active-l2', 'refcount-table', 'refcount-block', 'snapshot-table', 'inactive-l1',
  'inactive-l2', 'bitmap-directory',
];

const QCOW2 = [
  ...GENERIC_COW_FORMAT,
  optional('lazy-refcounts', 'bool'),
  optional('pass-discard-request', 'bool'),
  optional('pass-discard-snapshot', 'bool'),
  optional('pass-discard-other', 'bool'),
  optional('overlap-check', {
    kind: 'alternate',
    name: 'Qcow2OverlapChecks',
    object: { kind: 'object', members: [optional('template', OVERLAP_CHECK_MODE), ...OVERLAP_CHECK_FLAGS.map((f) => optional(f, 'bool'))] },
    string: OVERLAP_CHECK_MODE,
  }),
  optional('cache-size', 'int'),
  optional('l2-cache-size', 'int'),
  optional('l2-cache-entry-size', 'int'),
  optional('refcount-cache-size', 'int'),
  optional('cache-clean-interval', 'int'),
  optional('encrypt', {
    kind: 'object',
    members: [required('format', enumOf('aes', 'luks'))],
    union: { tag: 'format', variants: { aes: [optional('key-secret', 'str')], luks: [optional('key-secret', 'str')] } },
  }),
  optional('data-file', BLOCKDEV_REF),
];

BLOCKDEV_OPTIONS.union = {
  tag: 'driver',
  variants: {
    blkdebug: BLKDEBUG,
    blkverify: [required('test', BLOCKDEV_REF), required('raw', BLOCKDEV_REF)],
    blkreplay: [required('image', BLOCKDEV_REF)],
    'copy-on-read': [...GENERIC_FORMAT, optional('bottom', 'str')],
    file: FILE,
    host_cdrom: FILE,
    host_device: FILE,
    nbd: [
      required('server', SOCKET_ADDRESS), optional('export', 'str'), optional('tls-creds', 'str'), optional('tls-hostname', 'str'),
      optional('x-dirty-bitmap', 'str'), optional('reconnect-delay', 'uint32'), optional('open-timeout', 'uint32'),
    ],
    'null-aio': NULL,
    'null-co': NULL,
    preallocate: [...GENERIC_FORMAT, optional('prealloc-align', 'int'), optional('prealloc-size', 'int')],
    qcow2: QCOW2,
    quorum: [
      optional('blkverify', 'bool'),
      required('children', { kind: 'array', element: BLOCKDEV_REF }),
      required('vote-threshold', 'int'),
      optional('rewrite-corrupted', 'bool'),
      optional('read-pattern', enumOf('quorum', 'fifo')),
    ],
    raw: [...GENERIC_FORMAT, optional('offset', 'int'), optional('size', 'int')],
    throttle: [required('throttle-group', 'str'), ...GENERIC_FORMAT],
    ...Object.fromEntries(['bochs', 'cloop', 'compress', 'dmg', 'parallels', 'snapshot-access', 'vdi', 'vhdx', 'vpc'].map((d) => [d, GENERIC_FORMAT])),
    qed: GENERIC_COW_FORMAT,
    vmdk: GENERIC_COW_FORMAT,
  },
};
