import { describe, expect, it } from 'vitest';
import type { GuestStats, NodeStats } from '../api/types';
import { appendSample, guestPoint, hostPoint, points, rate } from './rates';

const guest = (over: Partial<GuestStats> = {}): GuestStats => ({
  id: 'vm-1',
  node_id: 'n1',
  sampled_at_ms: 10_000,
  running: true,
  pid: 42,
  cpu_seconds: 100,
  memory_rss_bytes: 300 << 20,
  threads: 5,
  disk_read_bytes: 1_000,
  disk_write_bytes: 2_000,
  io_read_bytes: 0,
  io_write_bytes: 0,
  nics: [{ nic_id: 'a', rx_bytes: 1_000, rx_packets: 1, rx_drops: 0, tx_bytes: 5_000, tx_packets: 1, tx_drops: 0 }],
  ...over,
});

const node = (at: number, busy: number, idle: number): NodeStats => ({
  node_id: 'n1',
  sampled_at_ms: at,
  host: { cpus: 2, cpu_busy_seconds: busy, cpu_idle_seconds: idle, memory_total_bytes: 8 * 2 ** 30, memory_available_bytes: 6 * 2 ** 30, load1: 0.5 },
  vms: [],
  pods: [],
});

describe('rates', () => {
  it('a counter per second; none when it went back or time stood still', () => {
    expect(rate(100, 300, 2)).toBe(100);
    expect(rate(300, 100, 2)).toBeNull();
    expect(rate(100, 100, 0)).toBeNull();
  });

  it('CPU % is Δcpu_seconds/Δt (like top: one busy CPU = 100 %), disk and NICs per second', () => {
    const prev = guest();
    const cur = guest({
      sampled_at_ms: 12_000,
      cpu_seconds: 100.5,
      disk_read_bytes: 1_000 + 4_096,
      disk_write_bytes: 2_000,
      nics: [
        { nic_id: 'a', rx_bytes: 3_000, rx_packets: 3, rx_drops: 0, tx_bytes: 5_000 + 8_000, tx_packets: 9, tx_drops: 0 },
        // A NIC that was not in the last sample has no rate yet.
        { nic_id: 'b', rx_bytes: 9e9, rx_packets: 1, rx_drops: 0, tx_bytes: 9e9, tx_packets: 1, tx_drops: 0 },
      ],
    });
    expect(guestPoint(prev, cur)).toEqual({
      t: 12_000,
      cpuPercent: 25,
      memoryBytes: 300 << 20,
      diskReadBps: 2_048,
      diskWriteBps: 0,
      netSentBps: 1_000,
      netReceivedBps: 4_000,
    });
    // Two vCPUs busy for the whole interval: 200 %.
    expect(guestPoint(prev, guest({ sampled_at_ms: 11_000, cpu_seconds: 102 })).cpuPercent).toBe(200);
  });

  it('the first sample has no rates; a restarted or stopped process gives none (counters start again)', () => {
    const first = guestPoint(undefined, guest());
    expect(first.cpuPercent).toBeNull();
    expect(first.memoryBytes).toBe(300 << 20);
    expect(first.netSentBps).toBeNull();
    // A new pid: its CPU seconds count from 0, which is not a negative rate.
    const restarted = guestPoint(guest(), guest({ sampled_at_ms: 12_000, pid: 43, cpu_seconds: 1, disk_read_bytes: 0 }));
    expect(restarted.cpuPercent).toBeNull();
    expect(restarted.diskReadBps).toBeNull();
    // NIC counters are the datapath's: they go on across the restart.
    expect(restarted.netSentBps).toBe(0);
    const stopped = guestPoint(guest(), guest({ sampled_at_ms: 12_000, running: false, pid: 0, cpu_seconds: 0, memory_rss_bytes: 0 }));
    expect(stopped.cpuPercent).toBeNull();
    expect(stopped.memoryBytes).toBeNull();
    // A NIC counter that went back (the NIC was re-created) is left out.
    const back = guestPoint(guest(), guest({ sampled_at_ms: 12_000, nics: [{ ...guest().nics[0], rx_bytes: 10 }] }));
    expect(back.netSentBps).toBeNull();
    expect(back.netReceivedBps).toBe(0);
  });

  it("the host's CPU is its busy share of all CPUs; memory used = total − available", () => {
    const p = hostPoint(node(0, 100, 300), node(2_000, 101, 304));
    expect(p.cpuPercent).toBe(20);
    expect(p.memoryUsedBytes).toBe(2 * 2 ** 30);
    expect(p.memoryTotalBytes).toBe(8 * 2 ** 30);
    expect(p.load1).toBe(0.5);
    expect(hostPoint(undefined, node(0, 1, 1)).cpuPercent).toBeNull();
    expect(hostPoint(node(0, 100, 300), node(2_000, 100, 300)).cpuPercent).toBeNull();
    expect(hostPoint(undefined, { ...node(0, 1, 1), host: null }).memoryUsedBytes).toBeNull();
  });

  it('keeps the samples of the window in time order, each sample once', () => {
    let h = appendSample([], guest({ sampled_at_ms: 1_000 }), 5_000);
    h = appendSample(h, guest({ sampled_at_ms: 3_000 }), 5_000);
    const same = appendSample(h, guest({ sampled_at_ms: 3_000 }), 5_000);
    expect(same).toBe(h);
    expect(appendSample(h, guest({ sampled_at_ms: 2_000 }), 5_000)).toBe(h);
    h = appendSample(h, guest({ sampled_at_ms: 7_000 }), 5_000);
    expect(h.map((s) => s.sampled_at_ms)).toEqual([3_000, 7_000]);
    expect(points(h, guestPoint).map((p) => p.t)).toEqual([3_000, 7_000]);
    expect(points(h, guestPoint)[0].cpuPercent).toBeNull();
  });
});
