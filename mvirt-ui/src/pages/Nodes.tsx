// Nodes: capacity and use, cordon (spec.schedulable = false: no new placements), drain (cordon
// and migrate the running VMs off), labels — both admin's (a drain moves every project's VMs); each node's page (NodeDetail.tsx) adds
// its live usage and the drain's progress.
import { useState } from 'react';
import { useMutation } from '@tanstack/react-query';
import { Link } from 'react-router';
import { del, post, put } from '../api/client';
import type { Node, Pod, Vm, Volume } from '../api/types';
import { useList } from '../live';
import { useCan } from '../auth';
import { ResourcePage } from '../components/ResourcePage';
import { Badge, Button, ConfirmButton, ErrorBox, inputCls, Meter } from '../components/ui';
import { ago, allocatedOn, bytes, formatLabels, parseLabels, validateLabels } from '../format';

export function NodeActions({ node }: { node: Node }) {
  const admin = useCan('admin');
  const cordon = useMutation({ mutationFn: (schedulable: boolean) => put(`/v1/nodes/${node.id}`, { spec: { ...node.spec, schedulable } }, node.revision) });
  const drain = useMutation({ mutationFn: () => post(`/v1/nodes/${node.id}/drain`, {}) });
  const undrain = useMutation({ mutationFn: () => del(`/v1/nodes/${node.id}/drain`) });
  if (!admin) return null;
  const draining = node.status.drain?.state === 'draining';
  const error = cordon.error ?? drain.error ?? undrain.error;
  return (
    <>
      {!draining && (
        <Button onClick={() => cordon.mutate(!node.spec.schedulable)} disabled={cordon.isPending}>
          {node.spec.schedulable ? 'Cordon' : 'Uncordon'}
        </Button>
      )}
      {!draining && (
        <ConfirmButton
          label="Drain"
          confirm={`Cordon ${node.name} and migrate its running VMs to other nodes?`}
          disabled={drain.isPending || node.status.state !== 'online'}
          onConfirm={() => drain.mutate()}
        />
      )}
      {node.status.drain && (
        <Button onClick={() => undrain.mutate()} disabled={undrain.isPending}>
          {draining ? 'Cancel drain' : 'Undrain'}
        </Button>
      )}
      {error && (
        <ErrorBox
          error={error}
          onClose={() => {
            cordon.reset();
            drain.reset();
            undrain.reset();
          }}
        />
      )}
    </>
  );
}

/** A node's drain: where it is, what moved, what is moving or left, what could not move and why. */
export function DrainStatus({ node, vms }: { node: Node; vms: Vm[] }) {
  const d = node.status.drain;
  if (!d) return null;
  const name = (id: string) => vms.find((v) => v.id === id)?.name ?? id;
  const vmLinks = (ids: string[] | undefined) =>
    ids && ids.length > 0
      ? ids.map((id, i) => (
          <span key={id}>
            {i > 0 && ', '}
            <Link to={`/vms/${id}`} className="underline">
              {name(id)}
            </Link>
          </span>
        ))
      : '—';
  return (
    <dl className="grid grid-cols-[10rem_1fr] gap-1 text-sm" data-testid="node-drain">
      <dt className="text-muted">State</dt>
      <dd>
        <Badge value={d.state} />
      </dd>
      <dt className="text-muted">Started</dt>
      <dd>{ago(d.started_at)}</dd>
      {d.finished_at && (
        <>
          <dt className="text-muted">Ended</dt>
          <dd>{ago(d.finished_at)}</dd>
        </>
      )}
      <dt className="text-muted">Migrating</dt>
      <dd>{vmLinks(d.migrating)}</dd>
      <dt className="text-muted">Remaining</dt>
      <dd>{vmLinks(d.remaining)}</dd>
      <dt className="text-muted">Moved</dt>
      <dd>{vmLinks(d.moved)}</dd>
      {(d.moved_pods ?? []).length > 0 && (
        <>
          <dt className="text-muted">Pods moved</dt>
          <dd>
            {(d.moved_pods ?? []).map((id, i) => (
              <span key={id}>
                {i > 0 && ', '}
                <Link to={`/pods/${id}`} className="underline">
                  {id}
                </Link>
              </span>
            ))}
          </dd>
        </>
      )}
      <dt className="text-muted">Could not move</dt>
      <dd>
        {(d.failed ?? []).length === 0 ? (
          '—'
        ) : (
          <ul>
            {(d.failed ?? []).map((f) => (
              <li key={`${f.kind}/${f.id}`}>
                {f.kind} {f.kind === 'vm' ? name(f.id) : f.id}: {f.reason}
              </li>
            ))}
          </ul>
        )}
      </dd>
    </dl>
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
