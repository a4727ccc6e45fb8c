import { describe, expect, it } from 'vitest';
import { decodeFrame, execUrl, resizeFrame, splitArgs, stdinEof, stdinFrame, STATUS, STDERR, STDOUT } from './frames';

const bytes = (...xs: number[]) => new Uint8Array(xs);
const text = (channel: number, s: string) => {
  const p = new TextEncoder().encode(s);
  const b = new Uint8Array(p.length + 1);
  b[0] = channel;
  b.set(p, 1);
  return b;
};

describe('exec frames (client → server)', () => {
  it('prefixes stdin with channel 0, as UTF-8', () => {
    expect(stdinFrame('ls\r')).toEqual(bytes(0, 0x6c, 0x73, 0x0d));
    expect(stdinFrame('é')).toEqual(bytes(0, 0xc3, 0xa9));
    expect(stdinFrame(bytes(3, 4))).toEqual(bytes(0, 3, 4));
  });
  it('closes stdin with an empty stdin frame', () => {
    expect(stdinEof()).toEqual(bytes(0));
  });
  it('sends a resize on channel 4 as JSON, and refuses a size that is not one', () => {
    const f = resizeFrame(120, 40);
    expect(f[0]).toBe(4);
    expect(JSON.parse(new TextDecoder().decode(f.subarray(1)))).toEqual({ cols: 120, rows: 40 });
    expect(() => resizeFrame(0, 40)).toThrow(/1–65535/);
    expect(() => resizeFrame(80.5, 24)).toThrow(RangeError);
  });
});

describe('exec frames (server → client)', () => {
  it('decodes stdout and stderr, keeping the bytes as they are', () => {
    const plain = (f: ReturnType<typeof decodeFrame>) => ('data' in f ? { channel: f.channel, data: Array.from(f.data) } : f);
    expect(plain(decodeFrame(bytes(1, 0xff, 0x0a)))).toEqual({ channel: STDOUT, data: [0xff, 0x0a] });
    expect(plain(decodeFrame(text(2, 'oops\n').buffer))).toEqual({ channel: STDERR, data: Array.from(new TextEncoder().encode('oops\n')) });
    expect(plain(decodeFrame(bytes(1)))).toEqual({ channel: STDOUT, data: [] });
  });
  it('decodes the status: an exit code or an error', () => {
    expect(decodeFrame(text(3, '{"exit_code": 42}'))).toEqual({ channel: STATUS, status: { exit_code: 42 } });
    expect(decodeFrame(text(3, '{"exit_code": 0}'))).toEqual({ channel: STATUS, status: { exit_code: 0 } });
    expect(decodeFrame(text(3, '{"error":"no such container: db"}'))).toEqual({ channel: STATUS, status: { error: 'no such container: db' } });
  });
  it('reports frames that break the protocol instead of throwing', () => {
    expect(decodeFrame(bytes())).toMatchObject({ channel: 'invalid', reason: expect.stringContaining('empty') });
    expect(decodeFrame(text(3, 'not json'))).toMatchObject({ channel: 'invalid', reason: expect.stringContaining('not JSON') });
    expect(decodeFrame(text(3, '{"other":1}'))).toMatchObject({ channel: 'invalid', reason: expect.stringContaining('without exit_code') });
    expect(decodeFrame(text(0, 'x'))).toMatchObject({ channel: 'invalid', reason: expect.stringContaining('channel 0') });
    expect(decodeFrame(text(4, '{}'))).toMatchObject({ channel: 'invalid', reason: expect.stringContaining('channel 4') });
  });
  it('round-trips what the server would send', () => {
    const out = decodeFrame(text(1, 'hello'));
    expect(out.channel === STDOUT && new TextDecoder().decode(out.data)).toBe('hello');
  });
});

describe('execUrl', () => {
  it('puts the container, tty, every argument and the token in the query, ws or wss like the page', () => {
    const u = new URL(execUrl('p 1', { container: 'web', command: ['sh', '-c', 'echo a&b'], tty: true, token: 't/k' }, { protocol: 'https:', host: 'h:8443' }));
    expect(u.protocol).toBe('wss:');
    expect(u.pathname).toBe('/v1/pods/p%201/exec');
    expect(u.searchParams.get('container')).toBe('web');
    expect(u.searchParams.get('tty')).toBe('true');
    expect(u.searchParams.getAll('command')).toEqual(['sh', '-c', 'echo a&b']);
    expect(u.searchParams.get('access_token')).toBe('t/k');
    expect(execUrl('p', { container: 'c', command: ['id'], tty: false, token: 't' }, { protocol: 'http:', host: 'h' })).toMatch(
      /^ws:\/\/h\/v1\/pods\/p\/exec\?container=c&tty=false&command=id&/,
    );
  });
});

describe('splitArgs', () => {
  it('splits like a shell for the simple cases', () => {
    expect(splitArgs('')).toEqual([]);
    expect(splitArgs('  ls   -la /  ')).toEqual(['ls', '-la', '/']);
    expect(splitArgs(`sh -c "echo \\"hi\\" there"`)).toEqual(['sh', '-c', 'echo "hi" there']);
    expect(splitArgs(`echo 'a  b' "" c\\ d`)).toEqual(['echo', 'a  b', '', 'c d']);
    expect(splitArgs(`x'y'"z"`)).toEqual(['xyz']);
  });
  it('refuses an unclosed quote', () => {
    expect(() => splitArgs(`sh -c "echo`)).toThrow('an unclosed " quote');
    expect(() => splitArgs(`it's`)).toThrow("an unclosed ' quote");
  });
});
