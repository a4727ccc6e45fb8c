// Usage over time from the live samples of `GET /v1/{vms,pods,nodes}/{id}/stats`. The API
// answers counters (CPU seconds, bytes since the process or host started) and gauges (memory,
// load) as the node reads them now; a chart needs rates, so each point here is the difference
// between two consecutive samples over the time between them (the node's clock:
// `sampled_at_ms`). CPU % = Δcpu_seconds / Δt × 100, like top (one busy vCPU = 100 %).
import type { GuestStats, NodeStats } from '../api/types';

/** One point of a guest's (VM's or pod's) charts. `null` = no value at that time (the first
 *  sample, the process not running, or its counters restarted). */
export interface GuestPoint {
  t: number;
  cpuPercent: number | null;
  memoryBytes: number | null;
  diskReadBps: number | null;
  diskWriteBps: number | null;
  /** Bytes per second the guest sends (its NICs' `rx`: the datapath receives from the guest). */
  netSentBps: number | null;
  /** Bytes per second the guest receives (`tx`: the datapath sends to the guest). */
  netReceivedBps: number | null;
}

/** One point of a node's charts. */
export interface HostPoint {
  t: number;
  /** Busy share of all the host's CPUs (100 % = every CPU busy). */
  cpuPercent: number | null;
  memoryUsedBytes: number | null;
  memoryTotalBytes: number | null;
  load1: number | null;
}

/** A counter's rate per second, or null when it went backwards (it restarted) or time did not
 *  advance. */
export function rate(prev: number, cur: number, seconds: number): number | null {
  if (!(seconds > 0) || cur < prev) return null;
  return (cur - prev) / seconds;
}

/** The NICs' summed rates: only NICs in both samples count, a NIC whose counter went back is
 *  left out; null when no NIC is in both. */
function nicRates(prev: GuestStats, cur: GuestStats, seconds: number) {
  const before = new Map(prev.nics.map((n) => [n.nic_id, n]));
  let sent: number | null = null;
  let received: number | null = null;
  for (const n of cur.nics) {
    const p = before.get(n.nic_id);
    if (!p) continue;
    const s = rate(p.rx_bytes, n.rx_bytes, seconds);
    const r = rate(p.tx_bytes, n.tx_bytes, seconds);
    if (s !== null) sent = (sent ?? 0) + s;
    if (r !== null) received = (received ?? 0) + r;
  }
  return { sent, received };
}

/** The point for `cur`, with rates since `prev` (the sample before it, if any). */
export function guestPoint(prev: GuestStats | undefined, cur: GuestStats): GuestPoint {
  const point: GuestPoint = {
    t: cur.sampled_at_ms,
    cpuPercent: null,
    memoryBytes: cur.running ? cur.memory_rss_bytes : null,
    diskReadBps: null,
    diskWriteBps: null,
    netSentBps: null,
    netReceivedBps: null,
  };
  if (!prev) return point;
  const seconds = (cur.sampled_at_ms - prev.sampled_at_ms) / 1000;
  // NIC counters live in the datapath, not in the process: they survive a guest restart.
  const net = nicRates(prev, cur, seconds);
  point.netSentBps = net.sent;
  point.netReceivedBps = net.received;
  // A process's counters start again with a new process: no rate across a restart.
  if (cur.running && prev.running && cur.pid === prev.pid) {
    const cpu = rate(prev.cpu_seconds, cur.cpu_seconds, seconds);
    point.cpuPercent = cpu === null ? null : cpu * 100;
    point.diskReadBps = rate(prev.disk_read_bytes, cur.disk_read_bytes, seconds);
    point.diskWriteBps = rate(prev.disk_write_bytes, cur.disk_write_bytes, seconds);
  }
  return point;
}

/** The point for a node's sample `cur`, with the CPU share since `prev`. */
export function hostPoint(prev: NodeStats | undefined, cur: NodeStats): HostPoint {
  const h = cur.host;
  const point: HostPoint = {
    t: cur.sampled_at_ms,
    cpuPercent: null,
    memoryUsedBytes: h ? h.memory_total_bytes - h.memory_available_bytes : null,
    memoryTotalBytes: h ? h.memory_total_bytes : null,
    load1: h ? h.load1 : null,
  };
  const p = prev?.host;
  if (h && p) {
    const busy = h.cpu_busy_seconds - p.cpu_busy_seconds;
    const idle = h.cpu_idle_seconds - p.cpu_idle_seconds;
    if (busy >= 0 && idle >= 0 && busy + idle > 0) point.cpuPercent = (busy / (busy + idle)) * 100;
  }
  return point;
}

/** Appends a sample to a history kept in time order: a sample the node read at the same time
 *  as the last one (asked twice before it read again) is not added twice, and samples older
 *  than `windowMs` before the newest are dropped. Returns the same array when nothing changed. */
export function appendSample<T extends { sampled_at_ms: number }>(history: T[], sample: T, windowMs: number): T[] {
  const last = history[history.length - 1];
  if (last && sample.sampled_at_ms <= last.sampled_at_ms) return history;
  const from = sample.sampled_at_ms - windowMs;
  const kept = history.filter((s) => s.sampled_at_ms >= from);
  kept.push(sample);
  return kept;
}

/** Points for a history of samples (each against the one before it). */
export function points<S, P>(history: S[], point: (prev: S | undefined, cur: S) => P): P[] {
  return history.map((s, i) => point(i > 0 ? history[i - 1] : undefined, s));
}

/** The guest's usage in a node's sample (a VM or pod on it), for the node page's table. */
export function guestIn(stats: NodeStats | undefined, kind: 'vm' | 'pod', id: string): GuestStats | undefined {
  return (kind === 'vm' ? stats?.vms : stats?.pods)?.find((g) => g.id === id);
}
