import { describe, expect, it } from 'vitest';
import { BlkioError } from '../../../src/errors.js';
import { parseBlockdevArg, parseKeyval, parseKeyvalWithHelp } from '../../../src/options/keyval.js';

function messageOf(action: () => unknown): string {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(BlkioError);
    return (error as BlkioError).message;
  }
  throw new Error('expected an error');
}

const A127 = 'a'.repeat(127);
const A128 = 'a'.repeat(128);

describe('parseKeyval', () => {
  it('builds nested objects of strings from dotted keys', () => {
    expect(parseKeyval('driver=qcow2,file.driver=file,file.filename=a.qcow2,cache.direct=on')).toEqual({
      driver: 'qcow2', file: { driver: 'file', filename: 'a.qcow2' }, cache: { direct: 'on' },
    });
  });

  it('makes arrays of index-only objects, in any order', () => {
    expect(parseKeyval('children.1.driver=raw,children.0.driver=file,children.0.x=1,n=2')).toEqual({
      children: [{ driver: 'file', x: '1' }, { driver: 'raw' }], n: '2',
    });
    expect(parseKeyval('a.0=x,a.1=y')).toEqual({ a: ['x', 'y'] });
    expect(parseKeyval('a.00=x')).toEqual({ a: ['x'] });
  });

  it('keeps the last of duplicate leaves', () => {
    expect(parseKeyval('a=1,b=2,a=3')).toEqual({ a: '3', b: '2' });
    expect(Object.keys(parseKeyval('a=1,b=2,a=3'))).toEqual(['a', 'b']);
  });

  it('unescapes ,, in values and accepts a trailing comma and empty values', () => {
    expect(parseKeyval('a=x,,y,b=')).toEqual({ a: 'x,y', b: '' });
    expect(parseKeyval('a=x,')).toEqual({ a: 'x' });
    expect(parseKeyval('a=x,,,')).toEqual({ a: 'x,' });
    expect(parseKeyval('')).toEqual({});
  });

  it('accepts QAPI names, downstream __RFQDN_ prefixes and long-enough fragments', () => {
    expect(parseKeyval('a_b-c=1,A=2,__org.qemu_x=3,x.__com.example_y=4')).toEqual({
      'a_b-c': '1', A: '2', '__org.qemu_x': '3', x: { '__com.example_y': '4' },
    });
    expect(parseKeyval(`${A127}=1`)).toEqual({ [A127]: '1' });
  });

  it('applies an implied key to a bare first item (without ,, escaping)', () => {
    expect(parseKeyval('secret,id=s0', 'qom-type')).toEqual({ 'qom-type': 'secret', id: 's0' });
    expect(parseKeyval('raw,driver=qcow2', 'driver')).toEqual({ driver: 'qcow2' });
    expect(messageOf(() => parseKeyval('secret,,x', 'qom-type'))).toBe("Invalid parameter ''");
    expect(messageOf(() => parseKeyval(',secret', 'qom-type'))).toBe("Invalid parameter ''");
    expect(messageOf(() => parseKeyval('id=s0,secret', 'qom-type'))).toBe("Expected '=' after parameter 'secret'");
  });

  it.each([
    // all confirmed with `qemu-io --object 'secret,id=s0,data=x,<item>'` of QEMU 7.2
    ['a=1,a.b=2', "Parameters 'a.*' used inconsistently"],
    ['a.b=1,a=2', "Parameters 'a.*' used inconsistently"],
    ['a.0=1,a.b=2', "Parameters 'a.*' used inconsistently"],
    ['a.0.b=1,a.1.b=2,a.1=3', "Parameters 'a.1.*' used inconsistently"],
    ['a=1,a.b.1c=2', "Parameters 'a.*' used inconsistently"],
    ['a.1=1', "Parameter 'a.0' missing"],
    ['a.0=1,a.2=2', "Parameter 'a.1' missing"],
    ['a.01=1', "Parameter 'a.0' missing"],
    ['a.99999999999999999999=1', "Parameter 'a.0' missing"],
    ['a.2147483647=1', "Parameter 'a.0' missing"],
    ['a.1=1,b.1=1', "Parameter 'a.0' missing"],
    ['b.1=1,a.1=1', "Parameter 'a.0' missing"],
    ['zz.1=1,q.1=1,foo.1=1', "Parameter 'zz.0' missing"],
    ['data', "Expected '=' after parameter 'data'"],
    ['=x', "Invalid parameter ''"],
    ['1=x', "Invalid parameter '1'"],
    ['0=x', "Invalid parameter '0'"],
    ['a.1b=x', "Invalid parameter 'a.1b'"],
    ['1a=x', "Invalid parameter '1a'"],
    ['a..b=x', "Invalid parameter 'a..b'"],
    ['a.=x', "Invalid parameter 'a.'"],
    ['.a=x', "Invalid parameter '.a'"],
    ['_a=x', "Invalid parameter '_a'"],
    ['__org.qemu_=x', "Invalid parameter '__org.qemu_'"],
    ['a b=x', "Invalid parameter 'a b'"],
    ['a.-1=x', "Invalid parameter 'a.-1'"],
    ['a.+1=x', "Invalid parameter 'a.+1'"],
    [`${A128}=1`, `Parameter '${A128}' is too long`],
    [A128, `Parameter '${A128}' is too long`],
    [`x.${A128}=1`, `Parameter fragment '${A128}' is too long`],
    [`${A128}.x=1`, `Parameter fragment '${A128}' is too long`],
  ])('%j -> %j', (item, message) => {
    expect(messageOf(() => parseKeyvalWithHelp(`secret,id=s0,data=x,${item}`, 'qom-type'))).toBe(message);
  });

  it('refuses help requests', () => {
    expect(messageOf(() => parseKeyval('help'))).toBe('Help is not available for this option');
    expect(messageOf(() => parseKeyval('driver=raw,?'))).toBe('Help is not available for this option');
    // syntax errors come first, listing errors after the help check
    expect(messageOf(() => parseKeyval('help,a=1,a.b=2'))).toBe("Parameters 'a.*' used inconsistently");
    expect(messageOf(() => parseKeyval('help,a.1=1'))).toBe('Help is not available for this option');
    expect(parseKeyval('help=1')).toEqual({ help: '1' });
  });
});

describe('parseKeyvalWithHelp', () => {
  it('reports help requests anywhere', () => {
    expect(parseKeyvalWithHelp('help', 'qom-type')).toEqual({ options: {}, help: true });
    expect(parseKeyvalWithHelp('?', 'qom-type')).toEqual({ options: {}, help: true });
    expect(parseKeyvalWithHelp('secret,help', 'qom-type')).toEqual({ options: { 'qom-type': 'secret' }, help: true });
    expect(parseKeyvalWithHelp('secret,id=s0', 'qom-type')).toEqual({ options: { 'qom-type': 'secret', id: 's0' }, help: false });
  });

  it('uses the implied key only for the first item, even after help', () => {
    expect(messageOf(() => parseKeyvalWithHelp('help,secret', 'qom-type'))).toBe("Expected '=' after parameter 'secret'");
  });
});

describe('parseBlockdevArg', () => {
  it('reads keyval with the implied key driver', () => {
    expect(parseBlockdevArg('qcow2,node-name=n,file.driver=file,file.filename=a')).toEqual({
      driver: 'qcow2', 'node-name': 'n', file: { driver: 'file', filename: 'a' },
    });
    expect(messageOf(() => parseBlockdevArg('help'))).toBe('Help is not available for this option');
  });

  it('reads JSON with typed values when the argument starts with {', () => {
    expect(parseBlockdevArg('{"driver":"null-co","size":1024,"read-zeroes":true,"node-name":"n"}')).toEqual({
      driver: 'null-co', size: 1024, 'read-zeroes': true, 'node-name': 'n',
    });
    expect(messageOf(() => parseBlockdevArg('{"driver":'))).toBe('JSON parse error, premature EOI');
    expect(messageOf(() => parseBlockdevArg('{} x'))).toBe('Expecting at most one JSON value');
  });

  it('treats anything else as keyval', () => {
    expect(parseBlockdevArg(' {"driver":"raw"}')).toEqual({ driver: ' {"driver":"raw"}' });
  });
});
