import { describe, expect, it } from 'vitest';
import { BLOCKDEV_OPTIONS } from '../../../src/drivers/blockdev-schema.js';
import { parseBlockdevArg } from '../../../src/options/keyval.js';
import { visitQapiObject } from '../../../src/options/qapi-input.js';

const visit = (text: string) => visitQapiObject(BLOCKDEV_OPTIONS, parseBlockdevArg(text), text.startsWith('{') ? 'json' : 'keyval');
const failure = (text: string): string => {
  try {
    visit(text);
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error(`no error for ${text}`);
};

// Expected texts are qemu-storage-daemon 7.2's for the same --blockdev arguments.
describe('visitQapiObject over BlockdevOptions', () => {
  it('types keyval values and keeps the schema order', () => {
    expect(visit('null-co,read-zeroes=yes,size=0x10,node-name=n,latency-ns=010')).toEqual({
      driver: 'null-co', 'node-name': 'n', size: 16, 'latency-ns': 8, 'read-zeroes': true,
    });
    expect(Object.keys(visit('raw,size=1,file.filename=a,node-name=r,file.driver=file'))).toEqual(['driver', 'node-name', 'file', 'size']);
    // A value beyond 2^53 goes on as given, so that the block layer parses it exactly.
    expect(visit('null-co,latency-ns=-1')['latency-ns']).toBe('-1');
  });

  it('reports missing, unexpected and misspelt members with their paths', () => {
    expect(failure('node-name=f')).toBe("Parameter 'driver' is missing");
    expect(failure('raw,file.driver=file')).toBe("Parameter 'file.filename' is missing");
    expect(failure('raw,file.driver=file,file.filename=a,file.bogus=1')).toBe("Parameter 'file.bogus' is unexpected");
    expect(failure('quorum,vote-threshold=1,children.0.driver=file')).toBe("Parameter 'children.0.filename' is missing");
    expect(failure('{"driver":"quorum","children":[{"driver":"file"}],"vote-threshold":1}')).toBe("Parameter 'children[0].filename' is missing");
    expect(failure('blkdebug,image=x,inject-error.0.errno=5')).toBe("Parameter 'inject-error.0.event' is missing");
    expect(failure('file,filename=a,file=x')).toBe("Parameter 'file' is unexpected");
  });

  it('names enum members without their path, list elements as null', () => {
    expect(failure('raw,file.driver=nosuch')).toBe("Parameter 'driver' does not accept value 'nosuch'");
    expect(failure('null-co,discard=on')).toBe("Parameter 'discard' does not accept value 'on'");
    expect(failure('blkdebug,image=x,inject-error.0.event=bad')).toBe("Parameter 'event' does not accept value 'bad'");
    expect(failure('blkdebug,image=x,take-child-perms.0=bad')).toBe("Parameter 'null' does not accept value 'bad'");
  });

  it('checks keyval scalars by type', () => {
    expect(failure('null-co,read-only=maybe')).toBe("Parameter 'read-only' expects 'on' or 'off'");
    expect(failure('null-co,size=1k')).toBe("Parameter 'size' expects integer");
    expect(failure('null-co,size=5 ')).toBe("Parameter 'size' expects integer");
    expect(failure('null-co,cache.direct=x')).toBe("Parameter 'cache.direct' expects 'on' or 'off'");
    expect(failure('blkdebug,image=x,max-transfer=99999999999')).toBe("Parameter 'max-transfer' expects int32_t");
    expect(failure('quorum,vote-threshold=x,children.0=f')).toBe("Parameter 'vote-threshold' expects integer");
  });

  it('checks JSON types', () => {
    expect(failure('{"driver":5}')).toBe("Invalid parameter type for 'driver', expected: string");
    expect(failure('{"driver":"file","filename":"a","read-only":"on"}')).toBe("Invalid parameter type for 'read-only', expected: boolean");
    expect(failure('{"driver":"null-co","size":1.5}')).toBe("Invalid parameter type for 'size', expected: integer");
    expect(failure('{"driver":"null-co","latency-ns":"x"}')).toBe("Parameter 'latency-ns' expects uint64");
    expect(failure('{"driver":"null-co","cache":5}')).toBe("Invalid parameter type for 'cache', expected: object");
    expect(failure('{"driver":"raw","file":null}')).toBe("Invalid parameter type for 'file', expected: BlockdevRef");
    expect(failure('{"driver":"qcow2","file":"x","backing":5}')).toBe("Invalid parameter type for 'backing', expected: BlockdevRefOrNull");
    expect(failure('{"driver":"quorum","children":"x","vote-threshold":1}')).toBe("Invalid parameter type for 'children', expected: array");
    expect(failure('{"driver":"quorum","children":[5],"vote-threshold":1}')).toBe("Invalid parameter type for 'null', expected: BlockdevRef");
    expect(failure('{"driver":"blkdebug","image":"x","inject-error":[5]}')).toBe("Invalid parameter type for 'inject-error[0]', expected: object");
    expect(visit('{"driver":"qcow2","file":"x","backing":null}').backing).toBeNull();
  });

  it('leaves the members of drivers it does not describe alone', () => {
    expect(visit('ssh,node-name=n,server.host=h')).toEqual({ driver: 'ssh', 'node-name': 'n', server: { host: 'h' } });
  });

  it("checks nbd's server as a SocketAddress", () => {
    expect(() => visit('nbd,node-name=n,server.type=unix')).toThrow("Parameter 'server.path' is missing");
    expect(visit('nbd,node-name=n,server.type=unix,server.path=s,reconnect-delay=5')).toEqual({
      driver: 'nbd', 'node-name': 'n', server: { type: 'unix', path: 's' }, 'reconnect-delay': 5,
    });
    expect(() => visit('nbd,node-name=n,server.type=unix,server.path=s,open-timeout=4294967296')).toThrow("Parameter 'open-timeout' expects uint32_t");
  });
});
