/**
 * User-created objects (`--object TYPE,id=ID,...`), kept in `layer.objects` by id: the types
 * the block layer uses, `throttle-group` (throttle nodes look groups up by name when they
 * open) and `secret`, and the other types of QEMU's tools, which nothing here uses
 * (inert-objects.ts). As in QEMU an object is made in three steps whose errors come in that
 * order: its properties are set, it is added under its id, then it is completed.
 */
import { BlkioError } from '../errors.js';
import { isTree, parseQemuJson } from '../options/json.js';
import { parseKeyvalWithHelp } from '../options/keyval.js';
import type { OptionTree } from '../options/types.js';
import type { BlockLayer } from './graph.js';
import { createInertObject, INERT_OBJECT_TYPES } from './inert-objects.js';
import { Secret, SECRET_PROPERTIES, secretProperties, stringProperty } from './secret.js';
import {
  THROTTLE_GROUP_PROPERTIES, ThrottleGroup, throttlePropertiesConfig, validateThrottleConfig,
} from './throttle-group.js';

/** Where objects live: a layer, or the registry a command fills before it makes its layer. */
export type ObjectRegistry = Pick<BlockLayer, 'objects'>;

interface ObjectType {
  /** Name and type of each property, for `TYPE,help`. */
  properties: ReadonlyArray<readonly [string, string]>;
  /** Set the properties (`typed`: from JSON); `complete` runs once the object is registered. */
  create(id: string, props: OptionTree, typed: boolean): { object: unknown; complete(registry: ObjectRegistry): void };
}

const BLOCK_OBJECT_TYPES: Record<string, ObjectType> = {
  secret: {
    properties: SECRET_PROPERTIES,
    create(id, props) {
      const secret = new Secret(id, secretProperties(props));
      return { object: secret, complete: (registry) => secret.complete((other) => registry.objects.get(other)) };
    },
  },
  'throttle-group': {
    properties: THROTTLE_GROUP_PROPERTIES,
    create(id, props, typed) {
      const config = throttlePropertiesConfig(props, typed);
      return { object: new ThrottleGroup(id, config), complete: () => validateThrottleConfig(config) };
    },
  },
};

/** The types `--object help` lists; `authz-list-file` among them, though QEMU 7.2 makes none. */
const OBJECT_TYPES: Record<string, ObjectType | Pick<ObjectType, 'properties'>> = {
  ...BLOCK_OBJECT_TYPES,
  ...Object.fromEntries(Object.entries(INERT_OBJECT_TYPES).map(([name, type]) => [name, type.members ? {
    properties: type.properties,
    create: (_id: string, props: OptionTree, typed: boolean) => createInertObject(name, type, props, typed),
  } : { properties: type.properties }])),
};

function objectTypeNamed(name: string): ObjectType | Pick<ObjectType, 'properties'> | undefined {
  return Object.hasOwn(OBJECT_TYPES, name) ? OBJECT_TYPES[name] : undefined;
}

/** A type `--object` makes (all listed ones but `authz-list-file`). */
function creatableType(name: string): ObjectType | undefined {
  const type = objectTypeNamed(name);
  return type && 'create' in type ? type : undefined;
}

const ID_PATTERN = /^[A-Za-z][A-Za-z0-9\-._]*$/;

/**
 * Create the object an `--object` option tree describes (`qom-type`, `id` and the type's
 * properties, as keyval or JSON parsing gives them: `typed` for JSON) and register it under its id.
 */
export function createObject(registry: ObjectRegistry, tree: OptionTree, typed = false): void {
  const { 'qom-type': type, id, ...props } = tree;
  if (type === undefined) throw new BlkioError('EINVAL', "Parameter 'qom-type' is missing");
  const objectType = creatableType(stringProperty('qom-type', type));
  if (!objectType) throw new BlkioError('EINVAL', `Parameter 'qom-type' does not accept value '${String(type)}'`);
  if (id === undefined) throw new BlkioError('EINVAL', "Parameter 'id' is missing");
  if (!ID_PATTERN.test(stringProperty('id', id))) {
    throw new BlkioError('EINVAL', "Parameter 'id' expects an identifier", [
      "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
    ]);
  }
  const { object, complete } = objectType.create(id as string, props, typed);
  if (registry.objects.has(id as string)) {
    throw new BlkioError('EEXIST', `attempt to add duplicate property '${String(id)}' to object (type 'container')`);
  }
  registry.objects.set(id as string, object);
  try {
    complete(registry);
  } catch (e) {
    registry.objects.delete(id as string);
    throw e;
  }
}

/**
 * An `--object` argument (keyval with the implied key `qom-type`, or JSON): the object is
 * created, or, when the argument asks for help, the help text is returned instead.
 */
export function processObjectArg(registry: ObjectRegistry, text: string): string | undefined {
  if (text.startsWith('{')) {
    const value = parseQemuJson(text);
    createObject(registry, isTree(value) ? value : {}, true);
    return undefined;
  }
  const { options, help } = parseKeyvalWithHelp(text, 'qom-type');
  if (help) return objectHelp(options['qom-type']);
  createObject(registry, options);
  return undefined;
}

/** `TYPE,help` lists the type's properties; `help`, or help for a type not known here, the types. */
function objectHelp(type: unknown): string {
  const objectType = typeof type === 'string' ? objectTypeNamed(type) : undefined;
  if (!objectType) return ['List of user creatable objects:', ...Object.keys(OBJECT_TYPES).sort().map((t) => `  ${t}`), ''].join('\n');
  // QEMU sorts the printed lines, so `x-a-max-length=` comes before `x-a-max=`.
  const lines = objectType.properties.map(([name, kind]) => `  ${name}=<${kind}>`).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return [`${type as string} options:`, ...lines, ''].join('\n');
}

/** The throttle group named `id`, or undefined when there is none. */
export function findThrottleGroup(layer: BlockLayer, id: string): ThrottleGroup | undefined {
  const obj = layer.objects.get(id);
  return obj instanceof ThrottleGroup ? obj : undefined;
}
