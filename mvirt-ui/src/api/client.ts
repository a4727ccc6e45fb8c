// The REST client: every call goes to /v1 on the page's own origin with the session's token.
// Errors come back as ApiError carrying the API's envelope {"error":{"code","message","details"}},
// so every page can show the API's own message.

export interface ErrorEnvelope {
  /** `request_id`: the request's trace id (`GET /v1/logs?trace_id=` finds the work it caused). */
  error: { code: string; message: string; details?: unknown; request_id?: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
    readonly requestId?: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** Turns a failed response's body into an ApiError (envelope if present, else the text). */
export function errorFrom(status: number, body: string): ApiError {
  try {
    const parsed = JSON.parse(body) as Partial<ErrorEnvelope>;
    if (parsed.error && typeof parsed.error.message === 'string') {
      return new ApiError(status, parsed.error.code ?? 'unknown', parsed.error.message, parsed.error.details, parsed.error.request_id ?? undefined);
    }
  } catch {
    // not JSON: fall through
  }
  return new ApiError(status, 'http_' + status, body.trim() || `HTTP ${status}`);
}

export interface Session {
  token: string;
}

let session: Session | null = null;
const listeners = new Set<() => void>();

export function setSession(s: Session | null) {
  session = s;
  listeners.forEach((l) => l());
}
export function getSession() {
  return session;
}
export function onSessionChange(l: () => void) {
  listeners.add(l);
  return () => {
    listeners.delete(l);
  };
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  query?: Record<string, string | number | boolean | undefined | null>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  token?: string;
}

export function buildUrl(path: string, query?: RequestOptions['query']): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

/** One REST call. Resolves with the parsed JSON (undefined for 204), rejects with ApiError. */
export async function api<T = unknown>(path: string, opts: RequestOptions = {}): Promise<T> {
  const token = opts.token ?? session?.token;
  const headers: Record<string, string> = { Accept: 'application/json', ...opts.headers };
  if (token) headers.Authorization = `Bearer ${token}`;
  let body: string | undefined;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  let resp: Response;
  try {
    resp = await fetch(buildUrl(path, opts.query), { method: opts.method ?? 'GET', headers, body, signal: opts.signal });
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e;
    throw new ApiError(0, 'network', `cannot reach the API: ${(e as Error).message}`);
  }
  const text = await resp.text();
  if (!resp.ok) {
    const err = errorFrom(resp.status, text);
    if (resp.status === 401 && !opts.token) setSession(null);
    throw err;
  }
  if (!text) return undefined as T;
  return JSON.parse(text) as T;
}

export interface Page<T> {
  items: T[];
  next_page_token?: string | null;
  revision: number;
}

/** Every page of a list; the revision is the lowest one the pages were read at. */
export async function listAll<T>(path: string, query: RequestOptions['query'] = {}): Promise<{ items: T[]; revision: number }> {
  const items: T[] = [];
  let token: string | undefined;
  let revision = Number.MAX_SAFE_INTEGER;
  for (;;) {
    const page = await api<Page<T>>(path, { query: { ...query, limit: 1000, page_token: token } });
    items.push(...page.items);
    revision = Math.min(revision, page.revision);
    if (!page.next_page_token) break;
    token = page.next_page_token;
  }
  return { items, revision };
}

export const post = <T = unknown>(path: string, body?: unknown, query?: RequestOptions['query']) => api<T>(path, { method: 'POST', body, query });
export const put = <T = unknown>(path: string, body: unknown, revision?: number) =>
  api<T>(path, { method: 'PUT', body, headers: revision ? { 'If-Match': `"${revision}"` } : {} });
export const del = (path: string, query?: RequestOptions['query']) => api<void>(path, { method: 'DELETE', query });
