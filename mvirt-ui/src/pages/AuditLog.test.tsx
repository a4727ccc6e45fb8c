import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import type { ApiError } from '../api/client';
import { json, renderApp, stubApi } from '../test/render';
import AuditLog, { followLogs, type FollowState, type LogEntry } from './AuditLog';

afterEach(() => vi.unstubAllGlobals());

const entry = (id: string, ns: number): LogEntry => ({
  id,
  timestamp_ns: ns,
  message: `created ${id}`,
  level: 'audit',
  component: 'mvirt-api',
  object_ids: [`0190-${id}`],
});

function sse(entries: LogEntry[], keepOpen = false) {
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      const enc = new TextEncoder();
      for (const e of entries) c.enqueue(enc.encode(`id: ${e.id}\nevent: log\ndata: ${JSON.stringify(e)}\n\n`));
      if (!keepOpen) c.close();
    },
  });
  return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
}

describe('followLogs', () => {
  it('delivers entries, and when the stream ends opens it again from the newest one seen', async () => {
    const urls: string[] = [];
    const answers = [sse([entry('a', 1_000), entry('b', 2_000)]), sse([entry('b', 2_000), entry('c', 3_000)], true)];
    vi.stubGlobal(
      'fetch',
      vi.fn(async (url: string, init: RequestInit) => {
        urls.push(url);
        expect(new Headers(init.headers).get('Authorization')).toBe('Bearer tok');
        return answers.shift() ?? new Promise<Response>(() => undefined);
      }),
    );
    const seen: string[] = [];
    const states: FollowState[] = [];
    const stop = followLogs({
      query: { level: 'audit' },
      token: 'tok',
      sinceNs: 500,
      onEntries: (es) => seen.push(...es.map((e) => e.id)),
      onState: (s) => states.push(s),
      onError: (e) => {
        throw e;
      },
      retryMs: 10,
    });
    await vi.waitFor(() => expect(seen).toEqual(['a', 'b', 'b', 'c']));
    stop();
    expect(urls[0]).toBe('/v1/logs?level=audit&follow=true&since_ns=500');
    expect(urls[1]).toBe('/v1/logs?level=audit&follow=true&since_ns=2000');
    expect(states).toEqual(['connecting', 'following', 'reconnecting', 'following']);
  });

  it("reports the API's refusal and does not ask again; retries when it is unavailable", async () => {
    let answers = [json({ error: { code: 'permission_denied', message: 'this token may not read the log' } }, 403)];
    const fetchMock = vi.fn(async () => answers.shift() ?? new Promise<Response>(() => undefined));
    vi.stubGlobal('fetch', fetchMock);
    const errors: ApiError[] = [];
    let stop = followLogs({
      query: {},
      token: 't',
      sinceNs: 0,
      onEntries: () => undefined,
      onState: () => undefined,
      onError: (e) => errors.push(e),
      retryMs: 10,
    });
    await vi.waitFor(() => expect(errors).toHaveLength(1));
    await new Promise((r) => setTimeout(r, 50));
    expect(fetchMock).toHaveBeenCalledTimes(1);
    expect(errors[0].message).toBe('this token may not read the log');
    expect(errors[0].code).toBe('permission_denied');
    stop();

    answers = [json({ error: { code: 'unavailable', message: 'mvirt-log unreachable' } }, 503), sse([entry('x', 5)], true)];
    const seen: string[] = [];
    stop = followLogs({
      query: {},
      token: 't',
      sinceNs: 0,
      onEntries: (es) => seen.push(...es.map((e) => e.id)),
      onState: () => undefined,
      onError: (e) => errors.push(e),
      retryMs: 10,
    });
    await vi.waitFor(() => expect(seen).toEqual(['x']));
    expect(errors[1].message).toBe('mvirt-log unreachable');
    stop();
  });
});

describe('AuditLog', () => {
  it('follows: new entries appear once each, and a refusal shows the API message', async () => {
    let follows = 0;
    stubApi((url) => {
      if (url.startsWith('/v1/logs') && url.includes('follow=true')) {
        follows++;
        return follows === 1
          ? sse([entry('new1', Date.now() * 1e6), entry('new1', Date.now() * 1e6)])
          : json({ error: { code: 'unavailable', message: 'mvirt-log is restarting' } }, 503);
      }
      if (url.startsWith('/v1/logs')) return json({ entries: [entry('old', 1)], next_cursor: null });
      return undefined;
    });
    renderApp(<AuditLog />);
    await screen.findByText('created old');
    await userEvent.click(screen.getByRole('checkbox', { name: 'Follow' }));
    expect(await screen.findByText('created new1')).toBeTruthy();
    expect(screen.getAllByText('created new1')).toHaveLength(1);
    expect((await screen.findByRole('alert')).textContent).toContain('mvirt-log is restarting');
    expect(screen.getByTestId('follow-state').textContent).toBe('reconnecting…');
    await userEvent.click(screen.getByRole('checkbox', { name: 'Follow' }));
  });

  it("reads its filters from the URL (the resource pages' links) and filters by an entry's trace", async () => {
    const calls = stubApi((url) => {
      if (url.startsWith('/v1/logs') && url.includes('trace_id=req-42'))
        return json({ entries: [{ ...entry('t1', 3), message: 'node applied it', trace_id: 'req-42' }], next_cursor: null });
      if (url.startsWith('/v1/logs')) return json({ entries: [{ ...entry('v1', 2), trace_id: 'req-42' }], next_cursor: null });
      return undefined;
    });
    renderApp(<AuditLog />, { path: '/audit?object_id=0190-v1' });
    await screen.findByText('created v1');
    expect(calls.find((c) => c.url.startsWith('/v1/logs'))!.url).toBe('/v1/logs?object_id=0190-v1&limit=100');
    expect((screen.getByLabelText('Object id') as HTMLInputElement).value).toBe('0190-v1');
    await userEvent.click(screen.getByRole('button', { name: 'req-42' }));
    expect(await screen.findByText('node applied it')).toBeTruthy();
    expect(calls.some((c) => c.url === '/v1/logs?trace_id=req-42&limit=100')).toBe(true);
    expect((screen.getByLabelText('Trace id') as HTMLInputElement).value).toBe('req-42');
  });
});
