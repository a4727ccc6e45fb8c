// Renders a page with every provider the app has, against a fetch the test provides.
import { QueryClientProvider } from '@tanstack/react-query';
import { render } from '@testing-library/react';
import type { ReactNode } from 'react';
import { MemoryRouter } from 'react-router';
import { vi } from 'vitest';
import { makeQueryClient } from '../App';
import { AuthProvider } from '../auth';
import { LiveProvider } from '../live';
import { ProjectProvider } from '../project';

export type Route = (url: string, init: RequestInit) => Response | Promise<Response> | undefined;

export const json = (body: unknown, status = 200) => new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
export const page = (items: unknown[]) => json({ items, next_page_token: null, revision: 1 });

/** Stubs fetch: `route` answers what it knows; lists are empty, the event stream stays open. */
export function stubApi(route: Route) {
  const calls: { url: string; init: RequestInit }[] = [];
  const fetchMock = vi.fn(async (url: string, init: RequestInit = {}) => {
    calls.push({ url, init });
    const r = await route(url, init);
    if (r) return r;
    if (url.startsWith('/v1/events')) return new Promise<Response>(() => undefined);
    if (url.startsWith('/v1/health')) return json({ status: 'ok', applied_revision: 1 });
    if (url.startsWith('/v1/whoami')) return json({ error: { code: 'not_found', message: 'no such endpoint' } }, 404);
    return page([]);
  });
  vi.stubGlobal('fetch', fetchMock);
  return calls;
}

export function renderApp(ui: ReactNode, { token = 'test-token', path = '/' } = {}) {
  sessionStorage.setItem('mvirt.token', token);
  return render(
    <QueryClientProvider client={makeQueryClient()}>
      <AuthProvider>
        <ProjectProvider>
          <MemoryRouter initialEntries={[path]}>
            <LiveProvider>{ui}</LiveProvider>
          </MemoryRouter>
        </ProjectProvider>
      </AuthProvider>
    </QueryClientProvider>,
  );
}

/** What a page sent besides reads: method, path (with query), body (parsed JSON) and If-Match. */
export function writes(calls: ReturnType<typeof stubApi>) {
  return calls
    .filter((c) => c.init.method && c.init.method !== 'GET')
    .map((c) => ({
      method: c.init.method,
      url: c.url,
      body: c.init.body === undefined ? undefined : JSON.parse(String(c.init.body)),
      ifMatch: (c.init.headers as Record<string, string> | undefined)?.['If-Match'],
    }));
}

/** An event stream the test pushes SSE frames into (answer `/v1/events` with `response()`). */
export function eventStream() {
  let push!: (text: string) => void;
  const body = new ReadableStream<Uint8Array>({ start: (c) => (push = (t) => c.enqueue(new TextEncoder().encode(t))) });
  return {
    response: () => new Response(body, { status: 200 }),
    /** One event: `type` like `vm.updated`; `object` null for a deletion. */
    send: (revision: number, type: string, id: string, project: string, object: unknown) =>
      push(`id: ${revision}\nevent: ${type}\ndata: ${JSON.stringify({ revision, type, kind: type.split('.')[0], id, project, object })}\n\n`),
  };
}
