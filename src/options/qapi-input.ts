/**
 * Checking an option tree against a QAPI type the way QEMU's QObject input visitor does (what
 * -blockdev and qemu-storage-daemon's --blockdev go through before the block layer sees
 * anything): members visited in schema order, the first problem reported with QEMU's text, and
 * unknown keys reported once a structure's members are done. The result holds the same data
 * with typed values (keyval's "on" becomes true, "0x10" becomes 16), members in schema order, as
 * QEMU's output visitor builds the dictionary it hands on.
 *
 * Two input forms: JSON (values are typed; a string where an integer belongs is a type error)
 * and keyval (every scalar is a string, parsed by the member's type).
 */
import { BlkioError } from '../errors.js';
import { GHashKeySet } from './ghash.js';
import { qdictKeyOrder } from './json.js';
import { parseBool, parseInteger, parseNumber, parseString } from './qemuopts.js';
import type { OptionScalar, OptionTree, OptionValue } from './types.js';

export type QapiBuiltin = 'str' | 'bool' | 'int' | 'int32' | 'uint16' | 'uint32' | 'uint64';

export interface QapiEnum {
  kind: 'enum';
  values: readonly string[];
}

export interface QapiMember {
  name: string;
  type: QapiType;
  optional?: boolean;
}

export interface QapiObject {
  kind: 'object';
  members: readonly QapiMember[];
  /** A flat union: the members of the variant the `tag` member selects follow the base members. */
  union?: {
    tag: string;
    /** Variants by tag value; a value missing here is valid but not checked further. */
    variants: Readonly<Record<string, readonly QapiMember[]>>;
  };
}

export interface QapiArray {
  kind: 'array';
  element: QapiType;
}

/** An alternate: which branch applies depends on the value's JSON type. */
export interface QapiAlternate {
  kind: 'alternate';
  /** The type's name, which QEMU's type errors print. */
  name: string;
  object?: QapiObject;
  /** The branch a string takes. */
  string?: 'str' | QapiEnum;
  acceptsNull?: boolean;
}

export type QapiType = QapiBuiltin | QapiEnum | QapiObject | QapiArray | QapiAlternate;

export type QapiInputForm = 'json' | 'keyval';

function invalid(message: string): BlkioError {
  return new BlkioError('EINVAL', message);
}

function isDict(value: OptionValue | undefined): value is OptionTree {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** One visit of an input tree; `path` is QEMU's full name of the container being visited. */
class Visitor {
  constructor(private readonly form: QapiInputForm) {}

  private fullName(path: string, name: string): string {
    return path === '' ? name : `${path}.${name}`;
  }

  private typeError(name: string, expected: string): BlkioError {
    return invalid(`Invalid parameter type for '${name}', expected: ${expected}`);
  }

  /**
   * Visit `value` (present) as `type`. `name` is the full name for QEMU's messages that use it,
   * `member` the plain member name (`null` inside lists) for those that don't.
   */
  visit(type: QapiType, value: OptionValue, name: string, member: string): OptionValue {
    if (typeof type === 'string') return this.builtin(type, value, name, member);
    switch (type.kind) {
      case 'enum': return this.enumValue(type, value, name, member);
      case 'object':
        if (!isDict(value)) throw this.typeError(name, 'object');
        return this.object(type, value, name);
      case 'array': return this.array(type, value, name);
      case 'alternate': return this.alternate(type, value, name, member);
    }
  }

  private string(value: OptionValue, name: string): string {
    if (typeof value !== 'string') throw this.typeError(name, 'string');
    return value;
  }

  private builtin(type: QapiBuiltin, value: OptionValue, name: string, member: string): OptionValue {
    // Keyval gives strings only: anything else (a nested level) is the wrong type for a scalar.
    // The parsers check the JSON types themselves.
    const scalar = (this.form === 'json' ? value : this.string(value, name)) as OptionScalar;
    const syntax = this.form === 'json' ? 'qapi' : 'keyval';
    if (type === 'str') return parseString(name, scalar, syntax);
    if (type === 'bool') return parseBool(name, scalar, syntax);
    const unsigned = type === 'uint64' || type === 'uint32' || type === 'uint16';
    const n = unsigned ? parseNumber(name, scalar, syntax) : parseInteger(name, scalar, syntax);
    if (type === 'int32' && (n < -(2 ** 31) || n >= 2 ** 31)) throw invalid(`Parameter '${member}' expects int32_t`);
    if (type === 'uint32' && n >= 2 ** 32) throw invalid(`Parameter '${member}' expects uint32_t`);
    if (type === 'uint16' && n >= 2 ** 16) throw invalid(`Parameter '${member}' expects uint16_t`);
    // Beyond 2^53 a number is inexact: the value as given parses the same way further down.
    return Number.isSafeInteger(n) ? n : scalar;
  }

  private enumValue(type: QapiEnum, value: OptionValue, name: string, member: string): string {
    const text = this.string(value, name);
    if (!type.values.includes(text)) throw invalid(`Parameter '${member}' does not accept value '${text}'`);
    return text;
  }

  private object(type: QapiObject, dict: OptionTree, path: string): OptionTree {
    const unvisited = new GHashKeySet(qdictKeyOrder(Object.keys(dict)));
    const out: OptionTree = {};
    const visitMembers = (members: readonly QapiMember[]): void => {
      for (const m of members) {
        const name = this.fullName(path, m.name);
        if (!Object.hasOwn(dict, m.name)) {
          if (!m.optional) throw invalid(`Parameter '${name}' is missing`);
          continue;
        }
        unvisited.delete(m.name);
        out[m.name] = this.visit(m.type, dict[m.name]!, name, m.name);
      }
    };
    visitMembers(type.members);
    if (type.union) {
      const variant = type.union.variants[out[type.union.tag] as string];
      if (!variant) {
        // Not checked here: the rest goes on unchanged for the block layer to judge.
        for (const [key, value] of Object.entries(dict)) if (!(key in out)) out[key] = value;
        return out;
      }
      visitMembers(variant);
    }
    const unexpected = unvisited.first();
    if (unexpected !== undefined) throw invalid(`Parameter '${this.fullName(path, unexpected)}' is unexpected`);
    return out;
  }

  private array(type: QapiArray, value: OptionValue, path: string): OptionValue[] {
    if (!Array.isArray(value)) throw this.typeError(path, 'array');
    return value.map((element, i) =>
      this.visit(type.element, element, this.form === 'keyval' ? `${path}.${i}` : `${path}[${i}]`, 'null'));
  }

  private alternate(type: QapiAlternate, value: OptionValue, name: string, member: string): OptionValue {
    if (isDict(value) && type.object) return this.object(type.object, value, name);
    if (typeof value === 'string' && type.string) return this.visit(type.string, value, name, member);
    if (value === null && type.acceptsNull) return null;
    throw this.typeError(member, type.name);
  }
}

/** Check `tree` against the object type `type`; the typed result, or QEMU's error for the first problem. */
export function visitQapiObject(type: QapiObject, tree: OptionTree, form: QapiInputForm): OptionTree {
  return new Visitor(form).visit(type, tree, '', '<anonymous>') as OptionTree;
}
