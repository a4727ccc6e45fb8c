// The audit log (mvirt-log through GET /v1/logs): filters, pages, and "follow", which keeps a
// stream open (the same fetch-based SSE reader as the events, with the token in the header) and
// opens it again where it left off when it ends (mvirt-log or the API restarted).
import { useEffect, useState, type FormEvent } from 'react';
import { useInfiniteQuery } from '@tanstack/react-query';
import { useSearchParams } from 'react-router';
import { api, ApiError, buildUrl, errorFrom, getSession, setSession } from '../api/client';
import { SseParser } from '../api/events';
import type { LogEntry } from '../api/types';
import { Badge, Button, ErrorBox, inputCls, PageHeader } from '../components/ui';
import { WindowedTable } from '../components/WindowedTable';

export type { LogEntry };

const LEVELS = ['audit', 'info', 'warn', 'error', 'debug'];

interface Filters {
  object_id: string;
  component: string;
  text: string;
  trace_id: string;
  levels: string[];
}

/** The query of the API's filters (empty ones are left out of the URL). */
export function query(f: Filters) {
  return { object_id: f.object_id, component: f.component, text: f.text, trace_id: f.trace_id, level: f.levels.join(',') };
}

/** Filters from the page's URL (`/audit?object_id=…`, `?trace_id=…`: the links on the VM, pod
 *  and node pages), so a filtered view can be linked and reloaded. */
export function filtersFrom(params: URLSearchParams): Filters {
  return {
    object_id: params.get('object_id') ?? '',
    component: params.get('component') ?? '',
    text: params.get('text') ?? '',
    trace_id: params.get('trace_id') ?? '',
    levels: (params.get('level') ?? '').split(',').filter((l) => LEVELS.includes(l)),
  };
}

export type FollowState = 'connecting' | 'following' | 'reconnecting';

/** Follows `GET /v1/logs?follow=true` from `sinceNs`. When the stream ends or fails it is
 *  opened again after `retryMs` from the newest entry seen (entries may then come twice:
 *  callers drop those by id); a refusal (4xx) is reported and not asked again. */
export function followLogs(opts: {
  query: Record<string, string>;
  token: string;
  sinceNs: number;
  onEntries: (entries: LogEntry[]) => void;
  onState: (s: FollowState) => void;
  onError: (e: ApiError) => void;
  retryMs?: number;
}): () => void {
  const ctrl = new AbortController();
  let since = opts.sinceNs;
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      ctrl.signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
    });
  void (async () => {
    opts.onState('connecting');
    while (!ctrl.signal.aborted) {
      try {
        const resp = await fetch(buildUrl('/v1/logs', { ...opts.query, follow: true, since_ns: since }), {
          headers: { Authorization: `Bearer ${opts.token}`, Accept: 'text/event-stream' },
          signal: ctrl.signal,
        });
        if (!resp.ok || !resp.body) {
          const err = errorFrom(resp.status, await resp.text());
          opts.onError(err);
          if (resp.status === 401) setSession(null);
          if (resp.status >= 400 && resp.status < 500) return;
        } else {
          opts.onState('following');
          const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
          const parser = new SseParser();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            const entries = parser.push(value).map((m) => JSON.parse(m.data) as LogEntry);
            for (const e of entries) since = Math.max(since, e.timestamp_ns);
            if (entries.length) opts.onEntries(entries);
          }
        }
      } catch (e) {
        if (ctrl.signal.aborted) return;
        opts.onError(e instanceof ApiError ? e : new ApiError(0, 'network', `the follow stream failed: ${(e as Error).message}`));
      }
      if (ctrl.signal.aborted) return;
      opts.onState('reconnecting');
      await pause(opts.retryMs ?? 1_000);
    }
  })();
  return () => ctrl.abort();
}

export default function AuditLog() {
  const [params, setParams] = useSearchParams();
  const [draft, setDraft] = useState<Filters>(() => filtersFrom(params));
  const [filters, setFilters] = useState(draft);
  const [follow, setFollow] = useState(false);
  const [live, setLive] = useState<LogEntry[]>([]);
  const [followError, setFollowError] = useState<ApiError>();
  const [followState, setFollowState] = useState<FollowState>('connecting');
  const pages = useInfiniteQuery({
    queryKey: ['logs', filters],
    queryFn: ({ pageParam }) =>
      api<{ entries: LogEntry[]; next_cursor?: string | null }>('/v1/logs', { query: { ...query(filters), limit: 100, cursor: pageParam } }),
    initialPageParam: undefined as string | undefined,
    getNextPageParam: (last) => last.next_cursor ?? undefined,
  });

  useEffect(() => {
    setLive([]);
    setFollowError(undefined);
    if (!follow) return;
    return followLogs({
      query: query(filters),
      token: getSession()?.token ?? '',
      sinceNs: Date.now() * 1e6,
      onEntries: (entries) =>
        setLive((old) => {
          const known = new Set(old.map((e) => e.id));
          const fresh = entries.filter((e) => !known.has(e.id)).reverse();
          return fresh.length ? [...fresh, ...old].slice(0, 1000) : old;
        }),
      onState: (st) => {
        setFollowState(st);
        if (st === 'following') setFollowError(undefined);
      },
      onError: setFollowError,
    });
  }, [follow, filters]);

  const seen = new Set(live.map((e) => e.id));
  const entries = [...live, ...(pages.data?.pages.flatMap((p) => p.entries) ?? []).filter((e) => !seen.has(e.id))];
  // The URL is where the filters live: a link to this page (a request id in an error, a
  // resource's log links) changes them as the Apply button does.
  const search = params.toString();
  useEffect(() => {
    const f = filtersFrom(new URLSearchParams(search));
    const same = (old: Filters) => JSON.stringify(old) === JSON.stringify(f);
    setFilters((old) => (same(old) ? old : f));
    setDraft((old) => (same(old) ? old : f));
  }, [search]);
  const show = (f: Filters) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query(f))) if (v) q.set(k, v);
    setDraft(f);
    if (q.toString() === search) setFilters(f);
    else setParams(q, { replace: true });
  };
  const apply = (e: FormEvent) => {
    e.preventDefault();
    show(draft);
  };
  return (
    <div className="flex flex-col gap-3">
      <PageHeader title="Audit log" />
      <form onSubmit={apply} className="flex flex-wrap items-end gap-3" aria-label="Log filters">
        <label className="flex flex-col text-sm">
          Object id
          <input className={inputCls} value={draft.object_id} onChange={(e) => setDraft({ ...draft, object_id: e.target.value.trim() })} />
        </label>
        <label className="flex flex-col text-sm">
          Component
          <input className={inputCls} value={draft.component} onChange={(e) => setDraft({ ...draft, component: e.target.value.trim() })} />
        </label>
        <label className="flex flex-col text-sm">
          Text
          <input className={inputCls} value={draft.text} onChange={(e) => setDraft({ ...draft, text: e.target.value })} />
        </label>
        <label className="flex flex-col text-sm">
          Trace id
          <input className={inputCls} value={draft.trace_id} onChange={(e) => setDraft({ ...draft, trace_id: e.target.value.trim() })} />
        </label>
        <fieldset className="flex gap-2 text-sm">
          <legend className="sr-only">Levels</legend>
          {LEVELS.map((l) => (
            <label key={l} className="flex items-center gap-1">
              <input
                type="checkbox"
                checked={draft.levels.includes(l)}
                onChange={() => setDraft({ ...draft, levels: draft.levels.includes(l) ? draft.levels.filter((x) => x !== l) : [...draft.levels, l] })}
              />
              {l}
            </label>
          ))}
        </fieldset>
        <Button type="submit">Apply</Button>
        <label className="flex items-center gap-1 text-sm">
          <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} /> Follow
        </label>
        {follow && (
          <span role="status" className="pb-1 text-xs text-muted" data-testid="follow-state">
            {followState === 'reconnecting' ? 'reconnecting…' : followState}
          </span>
        )}
      </form>
      <ErrorBox error={pages.error} />
      {pages.isLoading && <p className="text-sm text-muted">Loading…</p>}
      <ErrorBox error={followError} onClose={() => setFollowError(undefined)} />
      <WindowedTable
        label="Log entries"
        head={['Time', 'Level', 'Component', 'Message', 'Objects', 'Trace']}
        items={entries}
        itemKey={(e) => e.id}
        estimate={33}
        renderItem={(e) => (
          <tr>
            <td className="px-3 py-1 whitespace-nowrap font-mono text-xs">{new Date(e.timestamp_ns / 1e6).toISOString().replace('T', ' ').slice(0, 23)}</td>
            <td className="px-3 py-1">
              <Badge value={e.level} />
            </td>
            <td className="px-3 py-1">{e.component}</td>
            <td className="px-3 py-1">{e.message}</td>
            <td className="px-3 py-1 font-mono text-xs">{e.object_ids.map((o) => o.slice(-8)).join(' ')}</td>
            <td className="px-3 py-1 font-mono text-xs">
              {e.trace_id ? (
                <button
                  type="button"
                  className="underline"
                  title={`every entry of request ${e.trace_id}`}
                  onClick={() => show({ object_id: '', component: '', text: '', trace_id: e.trace_id!, levels: [] })}
                >
                  {e.trace_id.slice(-8)}
                </button>
              ) : (
                '—'
              )}
            </td>
          </tr>
        )}
      />
      {pages.hasNextPage && (
        <Button onClick={() => pages.fetchNextPage()} disabled={pages.isFetchingNextPage}>
          Older entries
        </Button>
      )}
    </div>
  );
}
