import { describe, expect, it, vi } from 'vitest';
import { openEventStream, SseParser, type ApiEvent } from './events';

describe('SseParser', () => {
  it('splits messages across chunks and keeps id, event and multi-line data', () => {
    const p = new SseParser();
    expect(p.push('id: 7\nevent: vm.created\nda')).toEqual([]);
    expect(p.push('ta: {"a":\ndata: 1}\n\n: keep-alive\n\nid: 8\r\ndata: x\r\n\r\n')).toEqual([
      { id: '7', event: 'vm.created', data: '{"a":\n1}' },
      { id: '8', event: undefined, data: 'x' },
    ]);
  });
  it('ignores comments and messages without data', () => {
    const p = new SseParser();
    expect(p.push(':ping\n\nid: 3\n\n')).toEqual([]);
  });
});

function sseResponse(chunks: string[], status = 200) {
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      const enc = new TextEncoder();
      chunks.forEach((ch) => c.enqueue(enc.encode(ch)));
      c.close();
    },
  });
  return new Response(body, { status, headers: { 'Content-Type': 'text/event-stream' } });
}

const ev = (revision: number): ApiEvent => ({ revision, type: 'vm.updated', kind: 'vm', id: 'a', project: 'default', object: null });

describe('openEventStream', () => {
  it('sends the token, and resumes after a drop with Last-Event-ID of the last event seen', async () => {
    const calls: Headers[] = [];
    const responses = [
      sseResponse([`id: 5\ndata: ${JSON.stringify(ev(5))}\n\n`, `id: 6\ndata: ${JSON.stringify(ev(6))}\n\n`]),
      sseResponse([`id: 7\ndata: ${JSON.stringify(ev(7))}\n\n`]),
    ];
    const fetchMock = vi.fn(async (_url: string, init: RequestInit) => {
      calls.push(new Headers(init.headers));
      const r = responses.shift();
      if (r) return r;
      return new Promise<Response>(() => undefined);
    });
    vi.stubGlobal('fetch', fetchMock);
    const seen: number[] = [];
    const close = openEventStream({ token: 'secret', from: 4, onEvent: (e) => seen.push(e.revision) });
    await vi.waitFor(() => expect(seen).toEqual([5, 6, 7]), { timeout: 3000 });
    close();
    vi.unstubAllGlobals();
    expect(calls[0].get('Authorization')).toBe('Bearer secret');
    expect(calls[0].get('Last-Event-ID')).toBe('4');
    expect(calls[1].get('Last-Event-ID')).toBe('6');
  });

  it('stops for good on 401 and reports the API message', async () => {
    vi.stubGlobal(
      'fetch',
      vi.fn(async () => new Response('{"error":{"code":"unauthenticated","message":"unknown or revoked token"}}', { status: 401 })),
    );
    const fatal = vi.fn();
    openEventStream({ token: 'bad', onEvent: () => undefined, onFatal: fatal });
    await vi.waitFor(() => expect(fatal).toHaveBeenCalledWith(401, 'unknown or revoked token'));
    vi.unstubAllGlobals();
  });
});

describe('openEventStream offline', () => {
  it('drops the connection when the browser goes offline and resumes when it is back', async () => {
    const calls: Headers[] = [];
    let firstSignal: AbortSignal | undefined;
    vi.stubGlobal(
      'fetch',
      vi.fn(async (_url: string, init: RequestInit) => {
        calls.push(new Headers(init.headers));
        if (calls.length === 1) {
          firstSignal = init.signal ?? undefined;
          // A stream that sends one event and then hangs, like a connection the network lost.
          const body = new ReadableStream<Uint8Array>({
            start(c) {
              c.enqueue(new TextEncoder().encode(`id: 9\ndata: ${JSON.stringify(ev(9))}\n\n`));
              init.signal?.addEventListener('abort', () => c.error(new DOMException('aborted', 'AbortError')));
            },
          });
          return new Response(body, { status: 200 });
        }
        return new Promise<Response>(() => undefined);
      }),
    );
    const states: string[] = [];
    const close = openEventStream({ token: 't', onEvent: () => undefined, onState: (s) => states.push(s) });
    await vi.waitFor(() => expect(states).toContain('live'));
    window.dispatchEvent(new Event('offline'));
    await vi.waitFor(() => expect(firstSignal?.aborted).toBe(true));
    window.dispatchEvent(new Event('online'));
    await vi.waitFor(() => expect(calls.length).toBe(2));
    expect(calls[1].get('Last-Event-ID')).toBe('9');
    close();
    vi.unstubAllGlobals();
  });
});
