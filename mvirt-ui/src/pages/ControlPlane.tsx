// The Raft control plane: members and their roles, the leader and term, log indexes; join
// tokens for new members (shown once); member removal.
import { useState } from 'react';
import { useMutation, useQuery } from '@tanstack/react-query';
import { api, del, post } from '../api/client';
import type { ControlPlane as CP } from '../api/types';
import { useCan } from '../auth';
import { Badge, Button, Card, ConfirmButton, ErrorBox, PageHeader, Table } from '../components/ui';
import { useRefetchOnReconnect } from '../live';

export default function ControlPlane() {
  const can = useCan('admin');
  const cp = useQuery({ queryKey: ['controlplane'], queryFn: () => api<CP>('/v1/controlplane') });
  useRefetchOnReconnect(cp.refetch);
  const [join, setJoin] = useState<{ token: string; expires_at_ms: number } | null>(null);
  const mint = useMutation({ mutationFn: () => post<{ token: string; expires_at_ms: number }>('/v1/controlplane/join-tokens', {}), onSuccess: setJoin });
  const remove = useMutation({ mutationFn: (id: number) => del(`/v1/controlplane/members/${id}`), onSuccess: () => cp.refetch() });
  const d = cp.data;
  return (
    <div className="flex flex-col gap-4">
      <PageHeader title="Control plane" actions={<Button onClick={() => cp.refetch()}>Refresh</Button>}>
        {d && `answered by member ${d.member_id} (${d.state})`}
      </PageHeader>
      <ErrorBox error={cp.error ?? remove.error} />
      {d && (
        <>
          <Card title="Raft">
            <dl className="grid grid-cols-2 gap-1 text-sm md:grid-cols-4">
              <dt className="text-muted">Leader</dt>
              <dd>{d.leader_id ?? 'none'}</dd>
              <dt className="text-muted">Term</dt>
              <dd>{d.term}</dd>
              <dt className="text-muted">Last log index</dt>
              <dd>{d.last_log_index ?? '—'}</dd>
              <dt className="text-muted">Applied</dt>
              <dd>{d.applied_index}</dd>
              <dt className="text-muted">Snapshot</dt>
              <dd>{d.snapshot_index ?? '—'}</dd>
              <dt className="text-muted">Purged</dt>
              <dd>{d.purged_index ?? '—'}</dd>
            </dl>
          </Card>
          <Table label="Members" head={['Id', 'Role', 'REST', 'Raft', '']}>
            {d.members.map((m) => (
              <tr key={m.id}>
                <td className="px-3 py-2">{m.id}</td>
                <td className="px-3 py-2">
                  <Badge value={m.role} />
                </td>
                <td className="px-3 py-2 font-mono text-xs">{m.api_url}</td>
                <td className="px-3 py-2 font-mono text-xs">{m.raft_addr}</td>
                <td className="px-3 py-2 text-right">
                  {can && d.members.length > 1 && <ConfirmButton label="Remove" confirm={`Remove member ${m.id}?`} onConfirm={() => remove.mutate(m.id)} />}
                </td>
              </tr>
            ))}
          </Table>
        </>
      )}
      {can && (
        <Card title="Add a member">
          <p className="mb-2 text-sm">
            A join token is single-use and expires in an hour. Start the new member with{' '}
            <code>mvirt-api --join {d?.members.find((m) => m.id === d.leader_id)?.api_url ?? '<url>'} --token &lt;token&gt;</code>.
          </p>
          <Button onClick={() => mint.mutate()} disabled={mint.isPending}>
            Create join token
          </Button>
          {join && (
            <code className="mt-2 block break-all rounded bg-surface p-2 font-mono text-sm" role="status">
              {join.token} (expires {new Date(join.expires_at_ms).toLocaleString()})
            </code>
          )}
          <ErrorBox error={mint.error} />
        </Card>
      )}
    </div>
  );
}
