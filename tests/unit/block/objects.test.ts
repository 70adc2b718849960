import { createCipheriv } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { processObjectArg, type ObjectRegistry } from '../../../src/block/objects.js';
import { tlsCredsEndpoint } from '../../../src/block/inert-objects.js';
import { Secret, secretData } from '../../../src/block/secret.js';

function registry(): ObjectRegistry {
  return { objects: new Map<string, unknown>() };
}

function secretBytes(reg: ObjectRegistry, id: string): string {
  const secret = reg.objects.get(id);
  if (!(secret instanceof Secret) || !secret.data) throw new Error(`no secret ${id}`);
  return Buffer.from(secret.data).toString('latin1');
}

describe('secretData', () => {
  it('gives a password only when it is UTF-8 without NUL', () => {
    const reg = registry();
    processObjectArg(reg, 'secret,id=ok,data=pw\u00e4');
    processObjectArg(reg, '{"qom-type": "secret", "id": "json-nul", "data": "pw\\u0000"}');
    processObjectArg(reg, 'secret,id=nul,data=cHcA,format=base64');
    processObjectArg(reg, 'secret,id=ff,data=cHf/,format=base64');
    const lookup = (id: string): unknown => reg.objects.get(id);
    expect(Buffer.from(secretData(lookup, 'ok')).toString()).toBe('pw\u00e4');
    for (const id of ['json-nul', 'nul', 'ff']) {
      expect(() => secretData(lookup, id)).toThrow(`Data from secret ${id} is not valid UTF-8`);
    }
  });
});

describe('--object secret', () => {
  it('loads raw and base64 data and files', () => {
    const dir = mkdtempSync(join(tmpdir(), 'blkio-secret-'));
    try {
      writeFileSync(join(dir, 'pw'), 'from a file');
      const reg = registry();
      processObjectArg(reg, 'secret,id=a,data=plain');
      processObjectArg(reg, 'secret,id=b,data=aGVsbG8=,format=base64');
      processObjectArg(reg, `secret,id=c,file=${join(dir, 'pw')}`);
      processObjectArg(reg, '{"qom-type": "secret", "id": "d", "data": "json"}');
      processObjectArg(reg, '{"qom-type": "secret", "id": "e", "data": "a\\u0000"}');
      expect(['a', 'b', 'c', 'd', 'e'].map((id) => secretBytes(reg, id))).toEqual(['plain', 'hello', 'from a file', 'json', 'a\xc0\x80']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('decrypts with the key of another secret, dropping the padding', () => {
    const key = Buffer.alloc(32, 7);
    const iv = Buffer.alloc(16, 1);
    const cipher = createCipheriv('aes-256-cbc', key, iv);
    const ciphertext = Buffer.concat([cipher.update('top secret'), cipher.final()]);
    const reg = registry();
    processObjectArg(reg, `secret,id=key,data=${key.toString('base64')},format=base64`);
    processObjectArg(reg, `secret,id=s,data=${ciphertext.toString('base64')},format=base64,keyid=key,iv=${iv.toString('base64')}`);
    expect(secretBytes(reg, 's')).toBe('top secret');
  });

  const failures: Array<[string[], string]> = [
    [['secret,id=a,data=x', 'secret,id=a,data=y'], "attempt to add duplicate property 'a' to object (type 'container')"],
    // Missing data is found on completion, after the duplicate id.
    [['secret,id=a,data=x', 'secret,id=a'], "attempt to add duplicate property 'a' to object (type 'container')"],
    [['secret,id=a'], "Either 'file' or 'data' must be provided"],
    [['secret,id=a,data=x,file=/x'], "'file' and 'data' are mutually exclusive"],
    [['secret,id=a,file=/nonexistent/x'], 'Unable to read /nonexistent/x: Failed to open file “/nonexistent/x”: No such file or directory'],
    [['secret,id=a,file=/'], 'Unable to read /: Error reading file “/”: Is a directory'],
    [['secret,id=a,data=@,format=base64'], 'Base64 data contains invalid characters'],
    [['secret,id=a,data=x,format=hex'], "Parameter 'format' does not accept value 'hex'"],
    [['secret,id=a,data=x,loaded=on'], "Property 'secret.loaded' is not writable"],
    [['{"qom-type": "secret", "id": "a", "data": 1}'], "Invalid parameter type for 'data', expected: string"],
    [['secret,id=a,data=x,keyid=k'], "No secret with id 'k'"],
    [['secret,id=a,data=x,keyid=a'], "Secret with id 'a' has no data"],
    [['throttle-group,id=t', 'secret,id=a,data=x,keyid=t'], "Object with id 't' is not a secret"],
    [['secret,id=k,data=short', 'secret,id=a,data=x,keyid=k'], 'Key should be 32 bytes in length'],
    [[`secret,id=k,data=${'k'.repeat(32)}`, 'secret,id=a,data=x,keyid=k'], 'IV is required to decrypt secret'],
    [[`secret,id=k,data=${'k'.repeat(32)}`, 'secret,id=a,data=x,keyid=k,iv=YWJj'], 'IV should be 16 bytes in length not 3'],
    [[`secret,id=k,data=${'k'.repeat(32)}`, `secret,id=a,data=x,keyid=k,iv=${'A'.repeat(22)}==`], 'Length 1 must be a multiple of block size 16'],
    [['secret,id=t,data=x', 'throttle-group,id=t,x-bps-total-max=10'], "attempt to add duplicate property 't' to object (type 'container')"],
    [['throttle-group,id=t,x-bps-total-max=10'], 'bps_max/iops_max require corresponding bps/iops values'],
    [['foo,id=x'], "Parameter 'qom-type' does not accept value 'foo'"],
  ];
  for (const [args, message] of failures) {
    it(`${args.join(' ')}: ${message}`, () => {
      const reg = registry();
      const last = args[args.length - 1];
      for (const arg of args.slice(0, -1)) processObjectArg(reg, arg);
      expect(() => processObjectArg(reg, last)).toThrow(message);
    });
  }
});

describe('objects nothing uses', () => {
  it('are made with their checks, or refused', () => {
    const reg = registry();
    processObjectArg(reg, 'tls-creds-anon,id=t,endpoint=server');
    processObjectArg(reg, 'authz-simple,id=a,identity=x');
    expect(() => processObjectArg(reg, 'authz-simple,id=a2')).toThrow("Parameter 'identity' is missing");
    expect(() => processObjectArg(reg, 'authz-list-file,id=f')).toThrow("Parameter 'qom-type' does not accept value 'authz-list-file'");
    expect(() => processObjectArg(reg, 'tls-cipher-suites,id=c')).toThrow("'priority' property is not set");
    expect(() => processObjectArg(reg, 'thread-context,id=c,cpu-affinity.0=70000')).toThrow("Parameter 'null' expects uint16_t");
    expect(() => processObjectArg(reg, 'authz-simple,id=a,identity=y')).toThrow("attempt to add duplicate property 'a'");
    expect(tlsCredsEndpoint(reg.objects.get('t'))).toBe('server');
    expect(tlsCredsEndpoint(reg.objects.get('a'))).toBeUndefined();
    expect([...reg.objects.keys()]).toEqual(['t', 'a']);
  });
});

describe('--object help', () => {
  it('lists the types, or the properties of one type', () => {
    expect(processObjectArg(registry(), 'help')!.split('\n')).toEqual([
      'List of user creatable objects:', '  authz-list', '  authz-list-file', '  authz-simple', '  main-loop',
      '  pr-manager-helper', '  secret', '  secret_keyring', '  thread-context', '  throttle-group', '  tls-cipher-suites',
      '  tls-creds-anon', '  tls-creds-psk', '  tls-creds-x509', '',
    ]);
    expect(processObjectArg(registry(), 'tls-creds-psk,help')).toBe(
      'tls-creds-psk options:\n  dir=<string>\n  endpoint=<QCryptoTLSCredsEndpoint>\n  priority=<string>\n  username=<string>\n  verify-peer=<bool>\n',
    );
    expect(processObjectArg(registry(), 'unknown,help')).toMatch(/^List of user creatable objects:/);
    expect(processObjectArg(registry(), 'secret,id=x,help')).toBe(
      'secret options:\n  data=<string>\n  file=<string>\n  format=<QCryptoSecretFormat>\n  iv=<string>\n  keyid=<string>\n',
    );
    const throttle = processObjectArg(registry(), 'throttle-group,help')!.split('\n');
    expect(throttle.slice(0, 4)).toEqual(['throttle-group options:', '  limits=<ThrottleLimits>', '  x-bps-read-max-length=<int>', '  x-bps-read-max=<int>']);
  });
});

describe('main-loop', () => {
  it('is one per registry, not one per process', () => {
    const first: ObjectRegistry = { objects: new Map() };
    const second: ObjectRegistry = { objects: new Map() };
    processObjectArg(first, 'main-loop,id=loop1');
    expect(() => processObjectArg(first, 'main-loop,id=loop2')).toThrow('only one main-loop instance allowed');
    processObjectArg(second, 'main-loop,id=loop1');
    expect([...first.objects.keys(), ...second.objects.keys()]).toEqual(['loop1', 'loop1']);
  });
});
