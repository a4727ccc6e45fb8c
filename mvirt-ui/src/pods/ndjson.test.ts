import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, setSession } from '../api/client';
import type { PodLogEntry } from '../api/types';
import { logsPath, NdjsonParser, readLogs } from './ndjson';

afterEach(() => {
  vi.unstubAllGlobals();
  setSession(null);
});

const entry = (line: string, stream = 'stdout'): PodLogEntry => ({ container: 'web', stream, time: '2026-12-07T09:00:00.123Z', line });

function ndjsonResponse(chunks: string[], opts: { status?: number; open?: boolean } = {}) {
  const enc = new TextEncoder();
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
      chunks.forEach((ch) => c.enqueue(enc.encode(ch)));
      if (!opts.open) c.close();
    },
  });
  return {
    resp: new Response(body, { status: opts.status ?? 200, headers: { 'Content-Type': 'application/x-ndjson' } }),
    push: (s: string) => controller.enqueue(enc.encode(s)),
    close: () => controller.close(),
  };
}

describe('NdjsonParser', () => {
  it('returns whole lines only, across chunk boundaries, with CRLF and blank lines', () => {
    const p = new NdjsonParser<PodLogEntry>();
    const a = JSON.stringify(entry('one'));
    const b = JSON.stringify(entry('two', 'stderr'));
    expect(p.push(a.slice(0, 10))).toEqual([]);
    expect(p.push(a.slice(10) + '\r\n\n' + b.slice(0, 5))).toEqual([entry('one')]);
    expect(p.push(b.slice(5) + '\n')).toEqual([entry('two', 'stderr')]);
    expect(p.end()).toEqual([]);
  });
  it('keeps a last line without a newline for the end', () => {
    const p = new NdjsonParser();
    expect(p.push('{"a":1}\n{"b":2}')).toEqual([{ a: 1 }]);
    expect(p.end()).toEqual([{ b: 2 }]);
  });
  it('skips a line that is not JSON and reports it, without losing the next', () => {
    const bad: string[] = [];
    const p = new NdjsonParser((line) => bad.push(line));
    expect(p.push('{"a":1}\nnot json\n{"b":2}\n')).toEqual([{ a: 1 }, { b: 2 }]);
    expect(bad).toEqual(['not json']);
  });
  it('keeps a line split inside a multi-byte character whole (the reader decodes the stream)', () => {
    const p = new NdjsonParser<PodLogEntry>();
    const s = JSON.stringify(entry('grüße')) + '\n';
    expect([...p.push(s.slice(0, 40)), ...p.push(s.slice(40))]).toEqual([entry('grüße')]);
  });
});

describe('readLogs', () => {
  it('asks for the container, follow and tail with the token, and delivers the lines as they arrive', async () => {
    setSession({ token: 'sekret' });
    const stream = ndjsonResponse([JSON.stringify(entry('first')) + '\n' + JSON.stringify(entry('sec')).slice(0, 12)], { open: true });
    const calls: { url: string; init: RequestInit }[] = [];
    vi.stubGlobal(
      'fetch',
      vi.fn(async (url: string, init: RequestInit) => {
        calls.push({ url, init });
        return stream.resp;
      }),
    );
    const got: string[] = [];
    let opened = false;
    const done = readLogs(
      'pod-1',
      { container: 'web', follow: true, tail: 50 },
      { onEntries: (es) => got.push(...es.map((e) => e.line)), onOpen: () => (opened = true) },
    );
    await vi.waitFor(() => expect(got).toEqual(['first']));
    expect(opened).toBe(true);
    expect(calls[0].url).toBe('/v1/pods/pod-1/logs?container=web&follow=true&tail=50');
    expect(new Headers(calls[0].init.headers).get('Authorization')).toBe('Bearer sekret');
    stream.push(JSON.stringify(entry('sec')).slice(12) + '\n');
    await vi.waitFor(() => expect(got).toEqual(['first', 'sec']));
    stream.push(JSON.stringify(entry('third')));
    stream.close();
    await done;
    expect(got).toEqual(['first', 'sec', 'third']);
  });

  it("rejects with the API's message when it refuses", async () => {
    vi.stubGlobal(
      'fetch',
      vi.fn(
        async () =>
          new Response(JSON.stringify({ error: { code: 'invalid_argument', message: 'the pod has 2 containers (web, db): say which with container=' } }), {
            status: 400,
          }),
      ),
    );
    const err = await readLogs('p', { follow: false }, { onEntries: () => undefined }).catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(400);
    expect(err.message).toContain('say which with container=');
  });

  it('stops when aborted', async () => {
    vi.stubGlobal(
      'fetch',
      vi.fn(async (_u: string, init: RequestInit) => {
        return new Promise<Response>((_, reject) => init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError'))));
      }),
    );
    const ctrl = new AbortController();
    const p = readLogs('p', { follow: true }, { onEntries: () => undefined, signal: ctrl.signal });
    ctrl.abort();
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('builds the path without empty parameters', () => {
    expect(logsPath('a b', { follow: false })).toBe('/v1/pods/a%20b/logs?follow=false');
  });
});
