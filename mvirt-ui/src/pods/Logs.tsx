// A pod's log in the page: per container, the last N lines, and with "follow" the NDJSON stream
// stays open and new lines arrive as they are written. The view is windowed (a followed log can
// hold thousands of lines) and sticks to the bottom unless the reader scrolled up.
import { useEffect, useRef, useState } from 'react';
import { useVirtualizer } from '@tanstack/react-virtual';
import type { Pod, PodLogEntry } from '../api/types';
import { Button, ErrorBox, inputCls } from '../components/ui';
import { validateInt } from '../format';
import { readLogs } from './ndjson';

/** Lines kept in the page (older ones are dropped as new ones arrive). */
export const MAX_LINES = 10_000;
const LINE = 20;

type State = 'connecting' | 'following' | 'reading' | 'ended' | 'failed';

export function PodLogs({ pod }: { pod: Pod }) {
  const names = pod.spec.containers.map((c) => c.name);
  const [container, setContainer] = useState(names[0] ?? '');
  const [follow, setFollow] = useState(true);
  const [tailText, setTailText] = useState('200');
  const [tail, setTail] = useState(200);
  const [run, setRun] = useState(0);
  const [lines, setLines] = useState<PodLogEntry[]>([]);
  const [state, setState] = useState<State>('connecting');
  const [error, setError] = useState<unknown>();
  const [bad, setBad] = useState(0);

  useEffect(() => {
    const ctrl = new AbortController();
    setLines([]);
    setError(undefined);
    setBad(0);
    setState('connecting');
    readLogs(
      pod.id,
      { container, follow, tail },
      {
        signal: ctrl.signal,
        onOpen: () => setState(follow ? 'following' : 'reading'),
        onEntries: (entries) => setLines((old) => (old.length + entries.length > MAX_LINES ? old.concat(entries).slice(-MAX_LINES) : old.concat(entries))),
        onBad: () => setBad((n) => n + 1),
      },
    ).then(
      () => !ctrl.signal.aborted && setState('ended'),
      (e) => {
        if (ctrl.signal.aborted) return;
        setError(e);
        setState('failed');
      },
    );
    return () => ctrl.abort();
  }, [pod.id, container, follow, tail, run]);

  const box = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const rows = useVirtualizer({ count: lines.length, getScrollElement: () => box.current, estimateSize: () => LINE, overscan: 20 });
  useEffect(() => {
    if (stick.current && lines.length) rows.scrollToIndex(lines.length - 1, { align: 'end' });
  }, [lines.length, rows]);

  const tailError = validateInt(tailText, 0, 100_000, 'lines');
  const stateText =
    state === 'connecting'
      ? 'connecting…'
      : state === 'following'
        ? `following · ${lines.length} lines`
        : state === 'reading'
          ? `reading · ${lines.length} lines`
          : state === 'ended'
            ? `${lines.length} lines · ${follow ? 'the stream ended' : 'complete'}`
            : 'failed';
  return (
    <div className="flex flex-col gap-2">
      <form
        className="flex flex-wrap items-end gap-3"
        aria-label="Log options"
        noValidate
        onSubmit={(e) => {
          e.preventDefault();
          if (tailError) return;
          setTail(Number(tailText));
          setRun((r) => r + 1);
        }}
      >
        {names.length > 1 && (
          <label className="flex flex-col text-sm">
            Container
            <select className={inputCls} value={container} onChange={(e) => setContainer(e.target.value)}>
              {names.map((n) => (
                <option key={n} value={n}>
                  {n}
                </option>
              ))}
            </select>
          </label>
        )}
        <label className="flex flex-col text-sm">
          Last lines
          <input className={`${inputCls} w-24`} inputMode="numeric" aria-invalid={!!tailError} value={tailText} onChange={(e) => setTailText(e.target.value)} />
        </label>
        <label className="flex items-center gap-1 text-sm">
          <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} /> Follow
        </label>
        <Button type="submit" disabled={!!tailError}>
          Reload
        </Button>
        <span className="text-xs text-muted" data-testid="logs-state" aria-live="polite">
          {stateText}
          {bad > 0 && ` · ${bad} unreadable lines skipped`}
        </span>
      </form>
      {tailError && <span className="text-xs text-danger">{tailError}</span>}
      <ErrorBox error={error} />
      <div
        ref={box}
        role="log"
        aria-label={`Log of ${container}`}
        tabIndex={0}
        data-testid="pod-logs"
        className="h-80 overflow-auto rounded-md bg-black p-2 font-mono text-xs text-slate-100"
        onScroll={(e) => {
          const el = e.currentTarget;
          stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < LINE * 2;
        }}
      >
        {lines.length === 0 ? (
          <p className="text-slate-400">{state === 'failed' ? 'no log' : 'no lines yet'}</p>
        ) : (
          <div style={{ height: rows.getTotalSize(), position: 'relative' }}>
            {rows.getVirtualItems().map((v) => {
              const l = lines[v.index];
              return (
                <div
                  key={v.index}
                  className={`absolute left-0 whitespace-pre ${l.stream === 'stderr' ? 'text-red-300' : ''}`}
                  style={{ top: v.start, height: LINE, lineHeight: `${LINE}px` }}
                  data-stream={l.stream}
                >
                  <span className="mr-2 text-slate-400">{l.time?.slice(11, 23)}</span>
                  {l.line}
                </div>
              );
            })}
          </div>
        )}
      </div>
    </div>
  );
}
