// The usage charts of the VM, pod and node pages: CPU, memory, disk and network over the last
// minutes, from the node's live samples (`GET /v1/{vms,pods,nodes}/{id}/stats`, asked every
// few seconds while the page is open: see sampler.ts).
import { useMemo } from 'react';
import { Link } from 'react-router';
import { ApiError } from '../api/client';
import type { GuestStats, NodeStats } from '../api/types';
import { Card, ErrorBox, Table } from '../components/ui';
import { bytes } from '../format';
import { guestPoint, hostPoint, points } from './rates';
import { SAMPLE_INTERVAL_MS, useSamples, WINDOW_MS } from './sampler';
import { Sparkline } from './Sparkline';

export const percent = (v: number) => `${v.toFixed(v < 10 ? 1 : 0)} %`;
export const perSecond = (v: number) => `${bytes(v)}/s`;
const load = (v: number) => v.toFixed(2);

const note = `sampled on the node every ${SAMPLE_INTERVAL_MS / 1000} s while this page is open`;

/** A 409 means there is nothing to sample (not placed, node offline, not there yet): said
 *  plainly, with the API's message. Anything else is an error box with the API's message. */
function SampleError({ error }: { error: unknown }) {
  if (!error) return null;
  if (error instanceof ApiError && error.status === 409)
    return (
      <p role="status" className="mb-2 text-sm text-muted" data-testid="usage-unavailable">
        No usage now: {error.message}
      </p>
    );
  return <ErrorBox error={error} />;
}

/** A VM's or pod's charts. `placed`: whether it has a node (else nothing is asked). */
export function GuestUsage({ kind, id, placed }: { kind: 'vm' | 'pod'; id: string; placed: boolean }) {
  const path = `/v1/${kind === 'vm' ? 'vms' : 'pods'}/${encodeURIComponent(id)}/stats`;
  const { history, error } = useSamples<GuestStats>(path, placed);
  const pts = useMemo(() => points(history, guestPoint), [history]);
  const times = pts.map((p) => p.t);
  const last = history[history.length - 1];
  const what = kind === 'vm' ? 'VM' : 'pod';
  return (
    <Card
      title="Usage"
      actions={
        <span className="text-xs text-muted">
          {note}
          {last?.running ? ` · hypervisor pid ${last.pid}, ${last.threads} threads` : ''}
        </span>
      }
    >
      {!placed && (
        <p role="status" className="mb-2 text-sm text-muted" data-testid="usage-unavailable">
          Not placed on a node yet: no usage to show.
        </p>
      )}
      <SampleError error={error} />
      {last && !last.running && (
        <p role="status" className="mb-2 text-sm text-muted">
          The {what}'s hypervisor process is not running on its node (only network counters are read).
        </p>
      )}
      <div className="grid gap-4 sm:grid-cols-2 xl:grid-cols-4">
        <Sparkline
          title="CPU (100 % = one CPU)"
          testId="usage-cpu"
          times={times}
          span={WINDOW_MS}
          floor={100}
          format={percent}
          series={[{ name: 'CPU', values: pts.map((p) => p.cpuPercent) }]}
        />
        <Sparkline
          title="Memory (resident)"
          testId="usage-memory"
          times={times}
          span={WINDOW_MS}
          format={bytes}
          series={[{ name: 'memory', values: pts.map((p) => p.memoryBytes) }]}
        />
        <Sparkline
          title="Disk"
          testId="usage-disk"
          times={times}
          span={WINDOW_MS}
          floor={1024}
          format={perSecond}
          series={[
            { name: 'read', values: pts.map((p) => p.diskReadBps) },
            { name: 'write', values: pts.map((p) => p.diskWriteBps) },
          ]}
        />
        <Sparkline
          title="Network"
          testId="usage-net"
          times={times}
          span={WINDOW_MS}
          floor={1024}
          format={perSecond}
          series={[
            { name: 'sent', values: pts.map((p) => p.netSentBps) },
            { name: 'received', values: pts.map((p) => p.netReceivedBps) },
          ]}
        />
      </div>
    </Card>
  );
}

interface Named {
  id: string;
  name: string;
}

/** How many guests the node page lists (the busiest first, like top). */
export const TOP_GUESTS = 20;

/** A node's charts and its busiest VMs and pods. `online`: whether to ask (an offline node's
 *  agent cannot answer). */
export function NodeUsage({ nodeId, online, vms, pods }: { nodeId: string; online: boolean; vms: Named[]; pods: Named[] }) {
  const { history, error } = useSamples<NodeStats>(`/v1/nodes/${encodeURIComponent(nodeId)}/stats`, online);
  const pts = useMemo(() => points(history, hostPoint), [history]);
  const times = pts.map((p) => p.t);
  const last = history[history.length - 1];
  const prev = history[history.length - 2];
  const total = pts.length ? pts[pts.length - 1].memoryTotalBytes : null;
  return (
    <Card title="Usage" actions={<span className="text-xs text-muted">{note}</span>}>
      {!online && (
        <p role="status" className="mb-2 text-sm text-muted" data-testid="usage-unavailable">
          The node is not online: no usage to show.
        </p>
      )}
      <SampleError error={error} />
      <div className="grid gap-4 sm:grid-cols-3">
        <Sparkline
          title={`CPU (${last?.host?.cpus ?? '?'} CPUs = 100 %)`}
          testId="usage-host-cpu"
          times={times}
          span={WINDOW_MS}
          floor={100}
          format={percent}
          series={[{ name: 'CPU', values: pts.map((p) => p.cpuPercent) }]}
        />
        <Sparkline
          title={`Memory used${total ? ` of ${bytes(total)}` : ''}`}
          testId="usage-host-memory"
          times={times}
          span={WINDOW_MS}
          floor={total ?? 0}
          format={bytes}
          series={[{ name: 'used', values: pts.map((p) => p.memoryUsedBytes) }]}
        />
        <Sparkline
          title="Load (1 min)"
          testId="usage-host-load"
          times={times}
          span={WINDOW_MS}
          floor={last?.host?.cpus ?? 1}
          format={load}
          series={[{ name: 'load', values: pts.map((p) => p.load1) }]}
        />
      </div>
      {last && <Guests last={last} prev={prev} vms={vms} pods={pods} />}
    </Card>
  );
}

/** The node's VMs and pods by CPU (from its last two samples), the busiest first. */
function Guests({ last, prev, vms, pods }: { last: NodeStats; prev?: NodeStats; vms: Named[]; pods: Named[] }) {
  const rows = useMemo(() => {
    const of = (kind: 'vm' | 'pod', list: GuestStats[], before: GuestStats[] | undefined, named: Named[]) => {
      const prevOf = new Map((before ?? []).map((b) => [b.id, b]));
      const names = new Map(named.map((n) => [n.id, n.name]));
      return list.map((g) => ({ kind, g, p: guestPoint(prevOf.get(g.id), g), name: names.get(g.id) ?? g.id }));
    };
    return [...of('vm', last.vms, prev?.vms, vms), ...of('pod', last.pods, prev?.pods, pods)].sort(
      (a, b) => (b.p.cpuPercent ?? -1) - (a.p.cpuPercent ?? -1) || a.name.localeCompare(b.name),
    );
  }, [last, prev, vms, pods]);
  if (!rows.length) return <p className="mt-3 text-sm text-muted">No VMs or pods on this node.</p>;
  return (
    <div className="mt-4">
      <h3 className="mb-1 text-sm font-semibold">On this node{rows.length > TOP_GUESTS ? ` (the ${TOP_GUESTS} busiest of ${rows.length})` : ''}</h3>
      <Table label="Usage of the VMs and pods on this node" head={['Name', 'Kind', 'CPU', 'Memory', 'Disk read/write', 'Network sent/received']}>
        {rows.slice(0, TOP_GUESTS).map(({ kind, g, p, name }) => (
          <tr key={`${kind}-${g.id}`} data-testid="node-guest-row" data-name={name}>
            <td className="px-3 py-2">
              <Link className="underline" to={`/${kind === 'vm' ? 'vms' : 'pods'}/${g.id}`}>
                {name}
              </Link>
            </td>
            <td className="px-3 py-2">{kind === 'vm' ? 'VM' : 'pod'}</td>
            <td className="px-3 py-2 font-mono text-xs">{p.cpuPercent === null ? (g.running ? '—' : 'not running') : percent(p.cpuPercent)}</td>
            <td className="px-3 py-2 font-mono text-xs">{p.memoryBytes === null ? '—' : bytes(p.memoryBytes)}</td>
            <td className="px-3 py-2 font-mono text-xs">
              {fmt(p.diskReadBps)} / {fmt(p.diskWriteBps)}
            </td>
            <td className="px-3 py-2 font-mono text-xs">
              {fmt(p.netSentBps)} / {fmt(p.netReceivedBps)}
            </td>
          </tr>
        ))}
      </Table>
    </div>
  );
}

const fmt = (v: number | null) => (v === null ? '—' : perSecond(v));
