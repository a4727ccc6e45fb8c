// The React side of the live layer: one event stream per login, resource lists from the cache.
import { createContext, useContext, useEffect, useMemo, useRef, useState, type ReactNode } from 'react';
import { useQuery, useQueryClient } from '@tanstack/react-query';
import { api } from './api/client';
import { openEventStream, type ApiEvent, type StreamState } from './api/events';
import { LiveSync, listKey, type Kind, type LiveList, type Resource } from './api/live';
import { useAuth } from './auth';

interface LiveState {
  sync: LiveSync;
  state: StreamState;
}
const LiveContext = createContext<LiveState | null>(null);

export function LiveProvider({ children }: { children: ReactNode }) {
  const qc = useQueryClient();
  const { token, logout } = useAuth();
  const sync = useMemo(() => new LiveSync(qc), [qc]);
  const [state, setState] = useState<StreamState>('connecting');

  useEffect(() => {
    if (!token) return;
    let close: (() => void) | undefined;
    let cancelled = false;
    // Start the stream at the revision the member has applied now; lists are read meanwhile
    // (not after: that wait was most of a cold first load) and read again if older than that.
    sync
      .health(() => api<{ applied_revision: number }>('/v1/health'))
      .then((h) => h.applied_revision)
      .catch(() => undefined)
      .then((from) => {
        sync.streamStarts(from);
        if (cancelled) return;
        close = openEventStream({
          token,
          from,
          onEvent: sync.onEvent,
          onState: setState,
          onFatal: () => logout(),
        });
      });
    return () => {
      cancelled = true;
      close?.();
    };
  }, [token, sync, logout]);

  const value = useMemo(() => ({ sync, state }), [sync, state]);
  return <LiveContext.Provider value={value}>{children}</LiveContext.Provider>;
}

export function useLive() {
  const ctx = useContext(LiveContext);
  if (!ctx) throw new Error('useLive outside LiveProvider');
  return ctx;
}

/** A live list of one kind (every project; filter with `inProject`). */
export function useList<T extends Resource = Resource>(kind: Kind) {
  const { sync } = useLive();
  const q = useQuery<LiveList>({
    queryKey: listKey(kind),
    queryFn: () => sync.load(kind),
    // The stream keeps the list current (and replays what a drop missed): never re-read it.
    staleTime: Infinity,
    refetchOnReconnect: false,
  });
  return { ...q, items: (q.data?.items ?? []) as T[] };
}

/** The newest `n` events, updated as they arrive. */
export function useRecentEvents(n: number): ApiEvent[] {
  const { sync } = useLive();
  const [events, setEvents] = useState(() => sync.recent(n));
  useEffect(() => sync.subscribe(() => setEvents(sync.recent(n))), [sync, n]);
  return events;
}

/** Reads again what the stream does not carry whole whenever the event stream comes back after a
 *  drop: who leads and the log indexes of the control plane are no events (members joining,
 *  changing role or leaving are, and tokens are: `LiveSync.onEvent`), and a new leader or a
 *  restarted API drops the stream, so this catches those without polling. */
export function useRefetchOnReconnect(refetch: () => unknown) {
  const { state } = useLive();
  const was = useRef(state);
  const latest = useRef(refetch);
  latest.current = refetch;
  useEffect(() => {
    if (state === 'live' && was.current !== 'live' && was.current !== 'connecting') void latest.current();
    was.current = state;
  }, [state]);
}
