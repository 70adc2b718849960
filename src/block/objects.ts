/**
 * User-created objects (`--object TYPE,id=ID,...`), kept in `layer.objects` by id. Only the
 * type the block layer itself uses exists: `throttle-group`, which throttle nodes look up by
 * name when they open.
 */
import { BlkioError } from '../errors.js';
import type { OptionTree } from '../options/types.js';
import type { BlockLayer } from './graph.js';
import { ThrottleGroup, throttleConfigFromProperties } from './throttle-group.js';

const OBJECT_TYPES = ['throttle-group'] as const;

const ID_PATTERN = /^[A-Za-z][A-Za-z0-9\-._]*$/;

/**
 * Create the object an `--object` option tree describes (`qom-type`, `id` and the type's
 * properties, as keyval parsing gives them) and register it under its id.
 */
export function createObject(layer: BlockLayer, tree: OptionTree): void {
  const { 'qom-type': type, id, ...props } = tree;
  if (type === undefined) throw new BlkioError('EINVAL', "Parameter 'qom-type' is missing");
  if (typeof type !== 'string' || !(OBJECT_TYPES as readonly string[]).includes(type)) {
    throw new BlkioError('EINVAL', `Parameter 'qom-type' does not accept value '${String(type)}'`);
  }
  if (id === undefined) throw new BlkioError('EINVAL', "Parameter 'id' is missing");
  if (typeof id !== 'string' || !ID_PATTERN.test(id)) {
    throw new BlkioError('EINVAL', "Parameter 'id' expects an identifier", [
      "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
    ]);
  }
  const group = new ThrottleGroup(id, throttleConfigFromProperties(props));
  if (layer.objects.has(id)) {
    throw new BlkioError('EEXIST', `attempt to add duplicate property '${id}' to object (type 'container')`);
  }
  layer.objects.set(id, group);
}

/** The throttle group named `id`, or undefined when there is none. */
export function findThrottleGroup(layer: BlockLayer, id: string): ThrottleGroup | undefined {
  const obj = layer.objects.get(id);
  return obj instanceof ThrottleGroup ? obj : undefined;
}
