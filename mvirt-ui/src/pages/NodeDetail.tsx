// One node: state, pod artefacts version and placement capacity (live), cordon, drain (with its
// progress) and labels, and its usage — the host's CPU, memory and load over the last minutes
// and its busiest VMs and pods.
import { Link, useParams } from 'react-router';
import type { Node, Pod, Vm } from '../api/types';
import { Badge, Card, PageHeader } from '../components/ui';
import { ago } from '../format';
import { LogLinks } from '../components/LogLinks';
import { useList } from '../live';
import { NodeUsage } from '../usage/Usage';
import { DrainStatus, NodeActions, NodeOverview } from './Nodes';

export default function NodeDetail() {
  const { id = '' } = useParams();
  const nodes = useList<Node>('node');
  const vms = useList<Vm>('vm').items;
  const pods = useList<Pod>('pod').items;
  const node = nodes.items.find((n) => n.id === id || n.name === id);
  if (nodes.isLoading) return <p className="text-sm text-muted">Loading…</p>;
  if (!node)
    return (
      <div>
        <PageHeader title="Node not found" />
        <p className="text-sm">
          There is no node {id} (it may have been removed).{' '}
          <Link to="/nodes" className="underline">
            All nodes
          </Link>
        </p>
      </div>
    );
  const placedVms = vms.filter((v) => v.node_id === node.id);
  const placedPods = pods.filter((p) => p.node_id === node.id);
  return (
    <div className="flex flex-col gap-4">
      <PageHeader title={node.name} actions={<NodeActions node={node} />}>
        <span className="font-mono">{node.id}</span> · <LogLinks object={node} />
      </PageHeader>
      <div className="grid gap-4 lg:grid-cols-2">
        <Card title="Status">
          <dl className="grid grid-cols-[10rem_1fr] gap-1 text-sm">
            <dt className="text-muted">State</dt>
            <dd data-testid="node-detail-state">
              <Badge value={node.status.state} />
            </dd>
            <dt className="text-muted">Schedulable</dt>
            <dd>{node.spec.schedulable ? 'yes' : node.status.drain?.state === 'draining' ? 'cordoned (draining)' : 'cordoned'}</dd>
            <dt className="text-muted">Placed here</dt>
            <dd>
              {placedVms.length} {placedVms.length === 1 ? 'VM' : 'VMs'} · {placedPods.length} {placedPods.length === 1 ? 'pod' : 'pods'}
            </dd>
            <dt className="text-muted">State changed</dt>
            <dd>{ago(node.status.last_state_change_at)}</dd>
            <dt className="text-muted">Pod artefacts</dt>
            <dd data-testid="node-detail-pod-artefacts">
              {node.status.pod_artefacts_version ? (
                <span className="font-mono">{node.status.pod_artefacts_version}</span>
              ) : (
                <span className="text-muted">none (no pods can run here)</span>
              )}
            </dd>
          </dl>
        </Card>
        <Card title="Capacity and labels">
          <NodeOverview node={node} />
        </Card>
      </div>
      {node.status.drain && (
        <Card title="Drain">
          <DrainStatus node={node} vms={vms} />
        </Card>
      )}
      <NodeUsage key={node.id} nodeId={node.id} online={node.status.state === 'online'} vms={placedVms} pods={placedPods} />
    </div>
  );
}
