// API tokens: the secret is shown once, right after creation, and never again.
import { useState } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { api, del, post } from '../api/client';
import type { TokenView } from '../api/types';
import { useCan } from '../auth';
import { SimpleForm } from '../components/Form';
import { Button, Card, ConfirmButton, ErrorBox, PageHeader } from '../components/ui';
import { WindowedTable } from '../components/WindowedTable';
import { useRefetchOnReconnect } from '../live';
import { ago, validateName } from '../format';

const projectList = (v: string) =>
  v
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);

/** Projects scope operator and viewer tokens only; each is a project name (a DNS label). */
export function validateProjects(role: string, v: string): string | undefined {
  const projects = projectList(v);
  if (projects.length && role !== 'operator' && role !== 'viewer') return 'only operator and viewer tokens are limited to projects';
  const bad = projects.find((p) => validateName(p));
  return bad ? `"${bad}" is not a project name` : undefined;
}

export function tokenBody(v: Record<string, string>) {
  const projects = projectList(v.projects ?? '');
  return projects.length ? { name: v.name, role: v.role, projects } : { name: v.name, role: v.role };
}

export default function Tokens() {
  const can = useCan('admin');
  const qc = useQueryClient();
  // Only admins may list tokens (the API answers 403 to others): nothing is asked for them.
  const tokens = useQuery({ queryKey: ['tokens'], queryFn: () => api<TokenView[]>('/v1/tokens'), enabled: can });
  useRefetchOnReconnect(() => can && tokens.refetch());
  const [created, setCreated] = useState<TokenView | null>(null);
  const [formKey, setFormKey] = useState(0);
  const remove = useMutation({ mutationFn: (id: string) => del(`/v1/tokens/${id}`), onSuccess: () => qc.invalidateQueries({ queryKey: ['tokens'] }) });
  if (!can)
    return (
      <div>
        <PageHeader title="API tokens" />
        <p className="text-sm text-muted">Only admins see and manage tokens.</p>
      </div>
    );
  return (
    <div className="flex flex-col gap-4">
      <PageHeader title="API tokens" actions={<Button onClick={() => tokens.refetch()}>Refresh</Button>} />
      {created && (
        <div role="status" className="rounded-md border border-green-600 bg-green-50 p-3 text-sm text-green-950 dark:bg-green-950 dark:text-green-50">
          <p className="font-medium">Token {created.name} created. Copy the secret now: it is not shown again.</p>
          <code className="mt-1 block break-all rounded bg-surface p-2 font-mono text-fg" data-testid="token-secret">
            {created.token}
          </code>
          <div className="mt-2 flex gap-2">
            <Button onClick={() => navigator.clipboard?.writeText(created.token ?? '')}>Copy</Button>
            <Button onClick={() => setCreated(null)}>Done</Button>
          </div>
        </div>
      )}
      <ErrorBox error={tokens.error ?? remove.error} />
      <WindowedTable
        label="Tokens"
        head={['Name', 'Role', 'Projects', 'Created', '']}
        items={tokens.data ?? []}
        itemKey={(t) => t.id}
        renderItem={(t) => (
          <tr data-testid="token-row" data-name={t.name}>
            <td className="px-3 py-2">{t.name}</td>
            <td className="px-3 py-2">{t.role}</td>
            <td className="px-3 py-2">{t.projects?.length ? t.projects.join(', ') : t.role === 'operator' || t.role === 'viewer' ? 'all' : '—'}</td>
            <td className="px-3 py-2">{ago(t.created_at)}</td>
            <td className="px-3 py-2 text-right">
              <ConfirmButton label="Revoke" confirm={`Revoke ${t.name}?`} onConfirm={() => remove.mutate(t.id)} />
            </td>
          </tr>
        )}
      />
      <Card title="New token">
        <SimpleForm
          key={formKey}
          label="Create token"
          fields={[
            { key: 'name', label: 'Name' },
            {
              key: 'role',
              label: 'Role',
              type: 'select',
              initial: 'admin',
              options: [
                { value: 'admin', label: 'admin (everything)' },
                { value: 'operator', label: 'operator (changes resources in its projects)' },
                { value: 'viewer', label: 'viewer (reads only; no console or exec)' },
                { value: 'node', label: 'node (a node agent: NodeService only)' },
              ],
            },
            { key: 'projects', label: 'Projects (operator and viewer)', hint: 'comma-separated project names; empty = every project' },
          ]}
          validate={(v) => ({ name: validateName(v.name), projects: validateProjects(v.role, v.projects) })}
          submit={(v) => post<TokenView>('/v1/tokens', tokenBody(v))}
          onDone={(t) => {
            setCreated(t as TokenView);
            setFormKey((k) => k + 1);
            void qc.invalidateQueries({ queryKey: ['tokens'] });
          }}
        />
      </Card>
    </div>
  );
}
