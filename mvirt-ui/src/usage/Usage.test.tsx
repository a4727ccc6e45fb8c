import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { act, screen, waitFor, within } from '@testing-library/react';
import type { GuestStats, NodeStats } from '../api/types';
import { json, renderApp, stubApi } from '../test/render';
import { SAMPLE_INTERVAL_MS } from './sampler';
import { GuestUsage, NodeUsage } from './Usage';

beforeEach(() => vi.useFakeTimers({ shouldAdvanceTime: true }));
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

/** A VM on its node: every read is a new sample 2 s later, with half a CPU second more. */
function vmSamples() {
  let n = 0;
  return (): GuestStats => {
    n++;
    return {
      id: 'vm-1',
      node_id: 'n1',
      sampled_at_ms: 1_000_000 + n * 2_000,
      running: true,
      pid: 77,
      cpu_seconds: 10 + n * 0.5,
      memory_rss_bytes: 200 << 20,
      threads: 4,
      disk_read_bytes: n * 4_096,
      disk_write_bytes: 0,
      io_read_bytes: 0,
      io_write_bytes: 0,
      nics: [{ nic_id: 'nic-1', rx_bytes: n * 2_048, rx_packets: n, rx_drops: 0, tx_bytes: 0, tx_packets: 0, tx_drops: 0 }],
    };
  };
}

const statsCalls = (calls: { url: string }[]) => calls.filter((c) => c.url.includes('/stats')).length;

describe('usage charts', () => {
  it("sample the VM's stats while the page is open and chart CPU %, memory, disk and network", async () => {
    const next = vmSamples();
    const calls = stubApi((url) => (url === '/v1/vms/vm-1/stats' ? json(next()) : undefined));
    const view = renderApp(<GuestUsage kind="vm" id="vm-1" placed />);
    // One sample has no rate yet; memory is a gauge and shows at once.
    await waitFor(() => expect(screen.getByTestId('usage-memory-now').textContent).toBe('200 MiB'));
    expect(screen.getByTestId('usage-cpu-now').textContent).toBe('—');
    await act(() => vi.advanceTimersByTimeAsync(SAMPLE_INTERVAL_MS));
    await waitFor(() => expect(screen.getByTestId('usage-cpu-now').textContent).toBe('25 %'));
    expect(screen.getByTestId('usage-disk-now').textContent).toBe('2.0 KiB/s');
    expect(screen.getByTestId('usage-net-now').textContent).toBe('1.0 KiB/s');
    expect(screen.getByTestId('usage-net-now-2').textContent).toBe('0 B/s');
    expect(screen.getByText(/hypervisor pid 77, 4 threads/)).toBeTruthy();
    // One request at a time, one per interval; none once the page is left.
    const asked = statsCalls(calls);
    expect(asked).toBe(2);
    view.unmount();
    await act(() => vi.advanceTimersByTimeAsync(SAMPLE_INTERVAL_MS * 5));
    expect(statsCalls(calls)).toBe(asked);
  });

  it('asks nothing for a VM not placed on a node', async () => {
    const calls = stubApi(() => undefined);
    renderApp(<GuestUsage kind="vm" id="vm-1" placed={false} />);
    expect(screen.getByTestId('usage-unavailable').textContent).toContain('Not placed on a node yet');
    await act(() => vi.advanceTimersByTimeAsync(SAMPLE_INTERVAL_MS * 3));
    expect(statsCalls(calls)).toBe(0);
  });

  it("show the API's 409 as why there is nothing to show, keep asking, and chart once it answers", async () => {
    const next = vmSamples();
    let refuse = 2;
    stubApi((url) => {
      if (url !== '/v1/pods/p-1/stats') return undefined;
      if (refuse-- > 0) return json({ error: { code: 'failed_precondition', message: 'node n1 has no pod p-1' } }, 409);
      return json({ ...next(), id: 'p-1' });
    });
    renderApp(<GuestUsage kind="pod" id="p-1" placed />);
    await waitFor(() => expect(screen.getByTestId('usage-unavailable').textContent).toBe('No usage now: node n1 has no pod p-1'));
    expect(screen.queryByRole('alert')).toBeNull();
    await act(() => vi.advanceTimersByTimeAsync(SAMPLE_INTERVAL_MS * 3));
    await waitFor(() => expect(screen.getByTestId('usage-cpu-now').textContent).toBe('25 %'));
    expect(screen.queryByTestId('usage-unavailable')).toBeNull();
  });

  it("show any other error with the API's message", async () => {
    stubApi((url) =>
      url.endsWith('/stats') ? json({ error: { code: 'unavailable', message: 'node agent unreachable: connection refused' } }, 503) : undefined,
    );
    renderApp(<GuestUsage kind="vm" id="vm-1" placed />);
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('node agent unreachable: connection refused');
    expect(alert.textContent).toContain('(unavailable)');
  });

  it('stop asking while the tab is hidden and go on when it is visible again', async () => {
    const next = vmSamples();
    const calls = stubApi((url) => (url.endsWith('/stats') ? json(next()) : undefined));
    let hidden = false;
    vi.spyOn(document, 'visibilityState', 'get').mockImplementation(() => (hidden ? 'hidden' : 'visible'));
    renderApp(<GuestUsage kind="vm" id="vm-1" placed />);
    await waitFor(() => expect(statsCalls(calls)).toBe(1));
    hidden = true;
    await act(() => vi.advanceTimersByTimeAsync(SAMPLE_INTERVAL_MS * 5));
    expect(statsCalls(calls)).toBe(1);
    hidden = false;
    act(() => void document.dispatchEvent(new Event('visibilitychange')));
    await waitFor(() => expect(statsCalls(calls)).toBe(2));
    // One loop, not two.
    await act(() => vi.advanceTimersByTimeAsync(SAMPLE_INTERVAL_MS));
    expect(statsCalls(calls)).toBe(3);
  });

  it("chart the node's CPU share, memory and load, and list its guests, the busiest first", async () => {
    let n = 0;
    const sample = (): NodeStats => {
      n++;
      const g = (id: string, cpu: number): GuestStats => ({
        id,
        node_id: 'n1',
        sampled_at_ms: n * 2_000,
        running: true,
        pid: 1,
        cpu_seconds: n * cpu,
        memory_rss_bytes: 64 << 20,
        threads: 1,
        disk_read_bytes: 0,
        disk_write_bytes: 0,
        io_read_bytes: 0,
        io_write_bytes: 0,
        nics: [],
      });
      return {
        node_id: 'n1',
        sampled_at_ms: n * 2_000,
        host: { cpus: 2, cpu_busy_seconds: n * 1, cpu_idle_seconds: n * 3, memory_total_bytes: 4 * 2 ** 30, memory_available_bytes: 3 * 2 ** 30, load1: 0.75 },
        vms: [g('vm-idle', 0.02), g('vm-busy', 1)],
        pods: [g('pod-1', 0.2)],
      };
    };
    stubApi((url) => (url === '/v1/nodes/n1/stats' ? json(sample()) : undefined));
    renderApp(
      <NodeUsage
        nodeId="n1"
        online
        vms={[
          { id: 'vm-idle', name: 'idle' },
          { id: 'vm-busy', name: 'busy' },
        ]}
        pods={[{ id: 'pod-1', name: 'web' }]}
      />,
    );
    await waitFor(() => expect(screen.getByTestId('usage-host-memory-now').textContent).toBe('1.0 GiB'));
    await act(() => vi.advanceTimersByTimeAsync(SAMPLE_INTERVAL_MS));
    await waitFor(() => expect(screen.getByTestId('usage-host-cpu-now').textContent).toBe('25 %'));
    expect(screen.getByTestId('usage-host-load-now').textContent).toBe('0.75');
    const rows = screen.getAllByTestId('node-guest-row');
    expect(rows.map((r) => r.getAttribute('data-name'))).toEqual(['busy', 'web', 'idle']);
    expect(within(rows[0]).getByRole('link', { name: 'busy' }).getAttribute('href')).toBe('/vms/vm-busy');
    expect(within(rows[1]).getByRole('link', { name: 'web' }).getAttribute('href')).toBe('/pods/pod-1');
    expect(within(rows[0]).getByText('50 %')).toBeTruthy();
  });

  it('ask nothing for a node that is not online', async () => {
    const calls = stubApi(() => undefined);
    renderApp(<NodeUsage nodeId="n1" online={false} vms={[]} pods={[]} />);
    expect(screen.getByTestId('usage-unavailable').textContent).toContain('not online');
    await act(() => vi.advanceTimersByTimeAsync(SAMPLE_INTERVAL_MS * 2));
    expect(statsCalls(calls)).toBe(0);
  });
});
