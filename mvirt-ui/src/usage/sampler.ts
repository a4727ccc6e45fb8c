// Samples a stats endpoint while a detail page is open. Usage is not state: the API reads it
// live from the node on every request and there is no event for it, so asking again every few
// seconds is the only way to see it move (lists and objects still come only from /v1/events).
// One request at a time (the next is asked `intervalMs` after the last answer), nothing while
// the tab is hidden, and nothing at all once the page is left.
import { useEffect, useState } from 'react';
import { api } from '../api/client';
import { appendSample } from './rates';

export const SAMPLE_INTERVAL_MS = 2_000;
export const WINDOW_MS = 5 * 60_000;

export interface Samples<T> {
  history: T[];
  /** The last request's error (the API's message), cleared by the next answer. */
  error: unknown;
}

/** Reads `path` every `intervalMs` while `enabled`; keeps the samples of the last `windowMs`.
 *  A new path starts a new history (callers key the component by it). */
export function useSamples<T extends { sampled_at_ms: number }>(
  path: string,
  enabled: boolean,
  intervalMs = SAMPLE_INTERVAL_MS,
  windowMs = WINDOW_MS,
): Samples<T> {
  const [state, setState] = useState<Samples<T>>({ history: [], error: undefined });
  useEffect(() => {
    if (!enabled) return;
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    // Set when the loop stopped itself because the tab was hidden: only then does becoming
    // visible start it again (so there is never a second loop).
    let parked = false;
    const abort = new AbortController();
    const next = () => {
      if (!stopped) timer = setTimeout(tick, intervalMs);
    };
    const tick = async () => {
      if (document.visibilityState === 'hidden') {
        parked = true;
        return;
      }
      try {
        const sample = await api<T>(path, { signal: abort.signal });
        if (stopped) return;
        setState((s) => ({ history: appendSample(s.history, sample, windowMs), error: undefined }));
      } catch (e) {
        if (stopped || (e as Error).name === 'AbortError') return;
        setState((s) => ({ history: s.history, error: e }));
      }
      next();
    };
    const onVisible = () => {
      if (document.visibilityState === 'visible' && parked && !stopped) {
        parked = false;
        void tick();
      }
    };
    document.addEventListener('visibilitychange', onVisible);
    void tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
      abort.abort();
      document.removeEventListener('visibilitychange', onVisible);
    };
  }, [path, enabled, intervalMs, windowMs]);
  return state;
}
