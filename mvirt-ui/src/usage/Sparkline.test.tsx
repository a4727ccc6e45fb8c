import { describe, expect, it } from 'vitest';
import { render, screen } from '@testing-library/react';
import { latest, scaleMax, shownSpan, spanLabel, sparkPath, Sparkline } from './Sparkline';

const frame = { end: 10_000, span: 10_000, max: 100, width: 100, height: 50 };

describe('sparkPath', () => {
  it('places points by time and value, 0 at the bottom', () => {
    expect(sparkPath([0, 5_000, 10_000], [0, 50, 100], frame)).toBe('M0 50 L50 25 L100 0');
  });
  it('breaks the line at a missing value, draws a lone value as a dot, and leaves out what is older than the span', () => {
    expect(sparkPath([-1_000, 2_000, 4_000, 6_000, 8_000], [10, 10, null, 20, 40], frame)).toBe('M20 45 h0 M60 40 L80 30');
  });
  it('clamps to the frame', () => {
    expect(sparkPath([10_000], [250], frame)).toBe('M100 0 h0');
    expect(sparkPath([10_000], [-5], frame)).toBe('M100 50 h0');
  });
});

describe('x axis', () => {
  it('covers the samples kept, at least 10 s, at most the window', () => {
    expect(shownSpan([], 300_000)).toBe(10_000);
    expect(shownSpan([5_000], 300_000)).toBe(10_000);
    expect(shownSpan([0, 4_000], 300_000)).toBe(10_000);
    expect(shownSpan([0, 42_000], 300_000)).toBe(42_000);
    expect(shownSpan([0, 900_000], 300_000)).toBe(300_000);
    expect(spanLabel(42_000)).toBe('42 s');
    expect(spanLabel(300_000)).toBe('5 min');
  });
});

describe('scale and newest value', () => {
  it('the y axis reaches a bit above the peak, never below the floor', () => {
    expect(scaleMax([{ name: 'a', values: [1, null, 3] }], 100)).toBe(100);
    expect(scaleMax([{ name: 'a', values: [1, 200] }], 100)).toBeCloseTo(220);
    expect(scaleMax([{ name: 'a', values: [] }], 0)).toBeGreaterThan(0);
  });
  it('the newest value skips missing ones', () => {
    expect(latest([1, 2, null])).toBe(2);
    expect(latest([null])).toBeNull();
  });
});

describe('<Sparkline>', () => {
  it('shows each series’ newest value and says the same to a screen reader', () => {
    render(
      <Sparkline
        title="Disk"
        testId="disk"
        times={[0, 30_000, 60_000]}
        span={300_000}
        format={(n) => `${Math.round(n)} B/s`}
        series={[
          { name: 'read', values: [null, 10, 20] },
          { name: 'write', values: [null, 5, null] },
        ]}
      />,
    );
    expect(screen.getByTestId('disk-now').textContent).toBe('20 B/s');
    expect(screen.getByTestId('disk-now-2').textContent).toBe('5 B/s');
    const img = screen.getByRole('img');
    expect(img.getAttribute('aria-label')).toBe('Disk, last 1 min: read 20 B/s, write 5 B/s; top of the scale 22 B/s');
    const paths = img.querySelectorAll('path');
    expect(paths).toHaveLength(2);
    expect(paths[0].getAttribute('d')).toMatch(/^M.* L/);
    expect(paths[0].getAttribute('d')).toBe('M120 26.2 L240 4.4');
    expect(paths[1].getAttribute('d')).toBe('M120 37.1 h0');
  });
  it('says when there is no value yet', () => {
    render(<Sparkline title="CPU" testId="cpu" times={[]} span={60_000} floor={100} format={String} series={[{ name: 'CPU', values: [] }]} />);
    expect(screen.getByTestId('cpu-now').textContent).toBe('—');
    expect(screen.getByRole('img').getAttribute('aria-label')).toContain('CPU no value yet');
  });
});
