// Nodes: capacity and use, cordon (spec.schedulable = false: no new placements), labels; each
// node's page (NodeDetail.tsx) adds its live usage.
import { useState } from 'react';
import { useMutation } from '@tanstack/react-query';
import { Link } from 'react-router';
import { put } from '../api/client';
import type { Node, Pod, Vm, Volume } from '../api/types';
import { useList } from '../live';
import { useCan } from '../auth';
import { ResourcePage } from '../components/ResourcePage';
import { Badge, Button, ErrorBox, inputCls, Meter } from '../components/ui';
import { ago, allocatedOn, bytes, formatLabels, parseLabels, validateLabels } from '../format';

export function NodeActions({ node }: { node: Node }) {
  const can = useCan('admin');
  const cordon = useMutation({ mutationFn: (schedulable: boolean) => put(`/v1/nodes/${node.id}`, { spec: { ...node.spec, schedulable } }, node.revision) });
  if (!can) return null;
  return (
    <>
      <Button onClick={() => cordon.mutate(!node.spec.schedulable)} disabled={cordon.isPending}>
        {node.spec.schedulable ? 'Cordon' : 'Uncordon'}
      </Button>
      {cordon.error && <ErrorBox error={cordon.error} onClose={() => cordon.reset()} />}
    </>
  );
}

export function useAllocated() {
  const vms = useList<Vm>('vm').items;
  const pods = useList<Pod>('pod').items;
  const volumes = useList<Volume>('volume').items;
  // Pods take node capacity like VMs (their microVM's vCPUs and memory).
  return (id: string) => allocatedOn(id, [...vms, ...pods], volumes);
}

export function NodeOverview({ node }: { node: Node }) {
  const can = useCan('admin');
  const used = useAllocated()(node.id);
  const [text, setText] = useState(formatLabels(node.labels));
  const [err, setErr] = useState<string>();
  const save = useMutation({ mutationFn: () => put(`/v1/nodes/${node.id}`, { labels: parseLabels(text) }, node.revision) });
  return (
    <div className="flex flex-col gap-3">
      <div className="grid max-w-xl gap-2">
        <Meter label="vCPU" used={used.vcpus} total={node.status.capacity.vcpus} format={String} />
        <Meter label="Memory" used={used.memory_bytes} total={node.status.capacity.memory_bytes} format={bytes} />
        <Meter label="Storage" used={used.storage_bytes} total={node.status.capacity.storage_bytes} format={bytes} />
      </div>
      <p className="text-sm">
        Address {node.status.address} · agent {node.status.agent_version || '—'} · state changed {ago(node.status.last_state_change_at)}
      </p>
      {can && (
        <form
          className="flex items-end gap-2"
          aria-label={`Labels of ${node.name}`}
          onSubmit={(e) => {
            e.preventDefault();
            const v = validateLabels(text);
            setErr(v);
            if (!v) save.mutate();
          }}
        >
          <label className="flex flex-col text-sm">
            Labels (k=v,k2=v2)
            <input className={inputCls} value={text} onChange={(e) => setText(e.target.value)} aria-invalid={!!err} />
          </label>
          <Button type="submit">Save labels</Button>
          {err && <span className="text-xs text-danger">{err}</span>}
        </form>
      )}
      <ErrorBox error={save.error} />
    </div>
  );
}

export default function Nodes() {
  const allocated = useAllocated();
  return (
    <ResourcePage<Node>
      kind="node"
      title="Nodes"
      noun="node"
      projectScoped={false}
      writeAction="admin"
      columns={[
        {
          head: 'Name',
          cell: (n) => (
            <Link className="underline" to={`/nodes/${n.id}`}>
              {n.name}
            </Link>
          ),
        },
        { head: 'State', cell: (n) => <Badge value={n.status.state} /> },
        { head: 'Schedulable', cell: (n) => (n.spec.schedulable ? 'yes' : 'cordoned') },
        { head: 'vCPU', cell: (n) => `${allocated(n.id).vcpus} / ${n.status.capacity.vcpus}` },
        { head: 'Memory', cell: (n) => `${bytes(allocated(n.id).memory_bytes)} / ${bytes(n.status.capacity.memory_bytes)}` },
        { head: 'Labels', cell: (n) => <span className="font-mono text-xs">{formatLabels(n.labels) || '—'}</span> },
      ]}
      extraActions={(n) => <NodeActions node={n} />}
      expand={(n) => <NodeOverview node={n} />}
    />
  );
}
