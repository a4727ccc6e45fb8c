// A small SVG line chart of the last minutes (no chart library: a few lines of SVG keep the
// detail pages light). The x axis is time (the node's sample times) from the oldest sample kept
// to the newest — it grows up to the window as samples come in, so a page opened seconds ago
// shows a line across the chart, not a dot at its edge —, the y axis starts at 0 and grows with
// the highest value shown; a missing value (null) breaks the line, a value alone is a dot.

export interface Series {
  name: string;
  values: (number | null)[];
}

export interface Frame {
  /** The newest time shown (right edge) and the span shown, in ms. */
  end: number;
  span: number;
  /** The top of the y axis. */
  max: number;
  width: number;
  height: number;
}

/** The SVG path of one series: `M x y L x y …`, a new `M` after every gap; a point with no
 *  neighbour gets a zero-length segment (`h0`), which a round line cap draws as a dot. */
export function sparkPath(times: number[], values: (number | null)[], f: Frame): string {
  const runs: string[][] = [];
  let run: string[] | null = null;
  for (let i = 0; i < times.length; i++) {
    const v = values[i];
    const x = f.width - ((f.end - times[i]) / f.span) * f.width;
    if (v === null || v === undefined || !Number.isFinite(v) || x < 0) {
      run = null;
      continue;
    }
    const y = f.height - (Math.min(Math.max(v, 0), f.max) / f.max) * f.height;
    if (!run) runs.push((run = []));
    run.push(`${run.length ? 'L' : 'M'}${round(x)} ${round(y)}`);
  }
  return runs.map((r) => (r.length === 1 ? `${r[0]} h0` : r.join(' '))).join(' ');
}

/** The least span of the x axis (one sample alone sits at the right edge). */
export const MIN_SPAN_MS = 10_000;

/** The time the x axis covers: from the oldest sample to the newest, at least `MIN_SPAN_MS`,
 *  at most `window`. */
export function shownSpan(times: number[], window: number): number {
  if (times.length < 2) return Math.min(MIN_SPAN_MS, window);
  return Math.min(window, Math.max(MIN_SPAN_MS, times[times.length - 1] - times[0]));
}

/** "40 s", "3 min". */
export function spanLabel(ms: number): string {
  return ms < 60_000 ? `${Math.round(ms / 1000)} s` : `${Math.round(ms / 60_000)} min`;
}

const round = (n: number) => Math.round(n * 10) / 10;

/** The newest value of a series, or null. */
export function latest(values: (number | null)[]): number | null {
  for (let i = values.length - 1; i >= 0; i--) {
    const v = values[i];
    if (v !== null && Number.isFinite(v)) return v;
  }
  return null;
}

/** The top of the y axis: at least `floor`, else a bit above the highest value shown. */
export function scaleMax(series: Series[], floor: number): number {
  let peak = 0;
  for (const s of series) for (const v of s.values) if (v !== null && Number.isFinite(v) && v > peak) peak = v;
  return Math.max(floor, peak * 1.1, Number.MIN_VALUE);
}

const STROKE = ['stroke-accent', 'stroke-emerald-600 dark:stroke-emerald-400'];
const SWATCH = ['bg-accent', 'bg-emerald-600 dark:bg-emerald-400'];
const W = 240;
const H = 48;

/** A chart with its title and each series' newest value. `testId` marks the figure; each
 *  series' newest value is `${testId}-now` (the first) and `${testId}-now-2` (the second). */
export function Sparkline({
  title,
  times,
  series,
  format,
  floor = 0,
  span,
  testId,
}: {
  title: string;
  times: number[];
  series: Series[];
  format: (n: number) => string;
  /** The least top of the y axis (100 for a share in %, so an idle guest looks idle). */
  floor?: number;
  /** The most time the x axis covers (the samples' window). */
  span: number;
  testId?: string;
}) {
  const end = times.length ? times[times.length - 1] : 0;
  const max = scaleMax(series, floor);
  const shown = shownSpan(times, span);
  const frame = { end, span: shown, max, width: W, height: H };
  const now = series.map((s) => latest(s.values));
  const summary = `${title}, last ${spanLabel(shown)}: ${series
    .map((s, i) => `${s.name} ${now[i] === null ? 'no value yet' : format(now[i])}`)
    .join(', ')}; top of the scale ${format(max)}`;
  return (
    <figure className="flex min-w-0 flex-col gap-1" data-testid={testId}>
      <figcaption className="flex flex-wrap items-baseline justify-between gap-x-3 text-xs">
        <span className="font-medium">{title}</span>
        <span className="flex flex-wrap gap-x-3">
          {series.map((s, i) => (
            <span key={s.name} className="inline-flex items-center gap-1">
              {series.length > 1 && <span aria-hidden="true" className={`inline-block h-2 w-2 rounded-full ${SWATCH[i % SWATCH.length]}`} />}
              {series.length > 1 && <span className="text-muted">{s.name}</span>}
              <span className="font-mono" data-testid={testId ? `${testId}-now${i ? `-${i + 1}` : ''}` : undefined}>
                {now[i] === null ? '—' : format(now[i])}
              </span>
            </span>
          ))}
        </span>
      </figcaption>
      <svg role="img" aria-label={summary} viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" className="h-14 w-full rounded border border-line bg-surface">
        {series.map((s, i) => (
          <path
            key={s.name}
            d={sparkPath(times, s.values, frame)}
            fill="none"
            strokeWidth={2}
            vectorEffect="non-scaling-stroke"
            strokeLinejoin="round"
            strokeLinecap="round"
            className={STROKE[i % STROKE.length]}
          />
        ))}
      </svg>
      <span className="flex justify-between text-[0.65rem] text-muted" aria-hidden="true">
        <span>−{spanLabel(shown)}</span>
        <span>max {format(max)}</span>
      </span>
    </figure>
  );
}
