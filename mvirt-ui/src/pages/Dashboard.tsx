// Cluster health (leader, members), nodes with capacity and use, counts per kind, recent events.
import { useMemo } from 'react';
import { useQuery } from '@tanstack/react-query';
import { Link } from 'react-router';
import { api } from '../api/client';
import type { ControlPlane, Node, Pod, Vm, Volume } from '../api/types';
import { Badge, Card, ErrorBox, Meter, PageHeader } from '../components/ui';
import { allocatedOn, bytes, shortId } from '../format';
import { useList, useRecentEvents, useRefetchOnReconnect } from '../live';
import { inProject, useProject } from '../project';

export function Dashboard() {
  const { project } = useProject();
  const cp = useQuery({ queryKey: ['controlplane'], queryFn: () => api<ControlPlane>('/v1/controlplane') });
  useRefetchOnReconnect(cp.refetch);
  const nodes = useList<Node>('node');
  const vms = useList<Vm>('vm');
  const networks = useList('network');
  const volumes = useList<Volume>('volume');
  const templates = useList('template');
  const pods = useList<Pod>('pod');
  // Pods take node capacity like VMs (their microVM's vCPUs and memory).
  const placed = useMemo(() => [...vms.items, ...pods.items], [vms.items, pods.items]);
  const events = useRecentEvents(12);
  const myVms = inProject(vms.items, project);
  const running = myVms.filter((v) => v.status?.phase === 'running').length;
  const leader = cp.data?.members.find((m) => m.id === cp.data?.leader_id);

  return (
    <div className="flex flex-col gap-4">
      <PageHeader title="Dashboard" />
      <div className="grid gap-4 md:grid-cols-2 xl:grid-cols-4">
        <Card title="Control plane">
          <ErrorBox error={cp.error} />
          {cp.data && (
            <dl className="grid grid-cols-2 gap-1 text-sm">
              <dt className="text-muted">Leader</dt>
              <dd data-testid="leader" className="break-all">
                {leader ? `member ${leader.id} (${leader.api_url})` : 'none'}
              </dd>
              <dt className="text-muted">Members</dt>
              <dd>{cp.data.members.length}</dd>
              <dt className="text-muted">Term</dt>
              <dd>{cp.data.term}</dd>
              <dt className="text-muted">Applied</dt>
              <dd>{cp.data.applied_index}</dd>
            </dl>
          )}
        </Card>
        <Card title="VMs">
          <p className="text-3xl font-semibold" data-testid="vm-count">
            {myVms.length}
          </p>
          <p className="text-sm text-muted">{running} running</p>
        </Card>
        <Card title="Resources">
          <dl className="grid grid-cols-2 gap-1 text-sm">
            <dt className="text-muted">Nodes</dt>
            <dd>{nodes.items.length}</dd>
            <dt className="text-muted">Networks</dt>
            <dd>{inProject(networks.items, project).length}</dd>
            <dt className="text-muted">Volumes</dt>
            <dd>{inProject(volumes.items, project).length}</dd>
            <dt className="text-muted">Templates</dt>
            <dd>{templates.items.length}</dd>
            <dt className="text-muted">Pods</dt>
            <dd data-testid="pod-count">{inProject(pods.items, project).length}</dd>
          </dl>
        </Card>
        <Card title="Recent events">
          <ul className="flex flex-col gap-1 text-xs" aria-label="Recent events">
            {events.length === 0 && <li className="text-muted">Nothing has happened since you opened the page.</li>}
            {events
              .slice()
              .reverse()
              .map((e, i) => (
                <li key={`${e.revision}-${e.id}-${i}`} className="flex justify-between gap-2">
                  <span className="font-mono">{e.type}</span>
                  <span className="truncate text-muted">{(e.object?.name as string) ?? shortId(e.id)}</span>
                </li>
              ))}
          </ul>
        </Card>
      </div>
      <Card title="Nodes">
        <ErrorBox error={nodes.error} />
        <div className="grid gap-3 md:grid-cols-2 xl:grid-cols-3">
          {nodes.items.map((n) => {
            const used = allocatedOn(n.id, placed, volumes.items);
            return (
              <div key={n.id} className="rounded-md border border-line p-3">
                <div className="mb-2 flex items-center justify-between">
                  <Link to={`/nodes/${n.id}`} className="font-medium underline">
                    {n.name}
                  </Link>
                  <Badge value={n.status?.state ?? ''} />
                </div>
                <div className="flex flex-col gap-2">
                  <Meter label="vCPU" used={used.vcpus} total={n.status?.capacity?.vcpus ?? 0} format={String} />
                  <Meter label="Memory" used={used.memory_bytes} total={n.status?.capacity?.memory_bytes ?? 0} format={bytes} />
                  <Meter label="Storage" used={used.storage_bytes} total={n.status?.capacity?.storage_bytes ?? 0} format={bytes} />
                </div>
              </div>
            );
          })}
          {nodes.items.length === 0 && <p className="text-sm text-muted">No node has registered yet.</p>}
        </div>
      </Card>
    </div>
  );
}
