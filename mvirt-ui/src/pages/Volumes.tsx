// Volumes with snapshots and resize (grow only). Rollback to a snapshot is offered when the API
// has the endpoint (POST /v1/volumes/{id}/snapshots/{snapshot_id}/rollback in the OpenAPI spec).
import { useState, type FormEvent } from 'react';
import { useMutation, useQuery } from '@tanstack/react-query';
import { Link } from 'react-router';
import { api, del, post } from '../api/client';
import type { Template, Volume } from '../api/types';
import { useCan } from '../auth';
import { SimpleForm } from '../components/Form';
import { ResourcePage } from '../components/ResourcePage';
import { Badge, Button, ErrorBox, Field, inputCls, Table } from '../components/ui';
import { ago, bytes, MIB, validateInt, validateName } from '../format';
import { useList } from '../live';
import { targetProject, useProject } from '../project';

/** The live spec's path for a snapshot action (`rollback`, `promote`), if this API offers it:
 *  the UI shows the button only then. */
function useSnapshotAction(action: string) {
  const spec = useQuery({ queryKey: ['openapi'], queryFn: () => api<{ paths: Record<string, unknown> }>('/v1/openapi.json'), staleTime: Infinity });
  return Object.keys(spec.data?.paths ?? {}).find((p) => p.startsWith('/v1/volumes/') && p.includes('snapshots') && p.endsWith(`/${action}`));
}

/** `/v1/volumes/{id}/snapshots/{snapshot_id}/rollback` with the two ids filled in. */
export function fillSnapshotPath(template: string, volumeId: string, snapshotId: string) {
  return template.replace('{id}', encodeURIComponent(volumeId)).replace(/\{[a-z_]+\}/, encodeURIComponent(snapshotId));
}

function VolumeDetail({ volume }: { volume: Volume }) {
  const can = useCan('write');
  const rollbackPath = useSnapshotAction('rollback');
  const promotePath = useSnapshotAction('promote');
  const [promoting, setPromoting] = useState<string | null>(null);
  const [templateName, setTemplateName] = useState('');
  const [size, setSize] = useState(String(Math.round(volume.spec.size_bytes / MIB)));
  const [snap, setSnap] = useState('');
  const [errors, setErrors] = useState<{ size?: string; snap?: string; template?: string }>({});
  const resize = useMutation({ mutationFn: () => post(`/v1/volumes/${volume.id}/resize`, { size_bytes: Number(size) * MIB }) });
  const snapshot = useMutation({ mutationFn: () => post(`/v1/volumes/${volume.id}/snapshots`, { name: snap }), onSuccess: () => setSnap('') });
  const removeSnap = useMutation({ mutationFn: (id: string) => del(`/v1/volumes/${volume.id}/snapshots/${id}`) });
  const rollback = useMutation({ mutationFn: (id: string) => post(fillSnapshotPath(rollbackPath!, volume.id, id)) });
  const promote = useMutation({
    mutationFn: (id: string) => post(fillSnapshotPath(promotePath!, volume.id, id), { name: templateName }),
    onSuccess: () => (setPromoting(null), setTemplateName('')),
  });
  const onResize = (e: FormEvent) => {
    e.preventDefault();
    const current = Math.round(volume.spec.size_bytes / MIB);
    let err = validateInt(size, 1, 64 * 1024 * 1024, 'size (MiB)');
    if (!err && Number(size) <= current) err = `volumes only grow: more than ${current} MiB`;
    setErrors({ size: err });
    if (!err) resize.mutate();
  };
  const onSnap = (e: FormEvent) => {
    e.preventDefault();
    const err = validateName(snap);
    setErrors({ snap: err });
    if (!err) snapshot.mutate();
  };
  return (
    <div className="flex flex-col gap-3">
      <Table label={`Snapshots of ${volume.name}`} head={['Snapshot', 'State', 'Created', '']}>
        {(volume.snapshots ?? []).map((s) => (
          <tr key={s.id}>
            <td className="px-3 py-1">{s.name}</td>
            <td className="px-3 py-1" title={s.status?.message}>
              <Badge value={s.status?.phase ?? ''} />
            </td>
            <td className="px-3 py-1">{ago(s.created_at)}</td>
            <td className="px-3 py-1 text-right">
              {can && rollbackPath && (
                <Button onClick={() => rollback.mutate(s.id)} className="mr-2">
                  Roll back
                </Button>
              )}
              {can && promotePath && (
                <Button onClick={() => setPromoting(promoting === s.id ? null : s.id)} className="mr-2" aria-expanded={promoting === s.id}>
                  Promote to template
                </Button>
              )}
              {can && <Button onClick={() => removeSnap.mutate(s.id)}>Delete</Button>}
            </td>
          </tr>
        ))}
        {!volume.snapshots?.length && (
          <tr>
            <td colSpan={4} className="px-3 py-2 text-sm text-muted">
              No snapshots.
            </td>
          </tr>
        )}
      </Table>
      {can && (
        <div className="flex flex-wrap gap-6">
          <form onSubmit={onSnap} noValidate className="flex items-end gap-2" aria-label={`Snapshot ${volume.name}`}>
            <Field label="Snapshot name" error={errors.snap}>
              {(id, d) => (
                <input id={id} aria-describedby={d} aria-invalid={!!errors.snap} className={inputCls} value={snap} onChange={(e) => setSnap(e.target.value)} />
              )}
            </Field>
            <Button type="submit">Take snapshot</Button>
          </form>
          <form onSubmit={onResize} noValidate className="flex items-end gap-2" aria-label={`Resize ${volume.name}`}>
            <Field label="New size (MiB)" error={errors.size}>
              {(id, d) => (
                <input
                  id={id}
                  aria-describedby={d}
                  aria-invalid={!!errors.size}
                  className={`${inputCls} w-32`}
                  value={size}
                  onChange={(e) => setSize(e.target.value)}
                />
              )}
            </Field>
            <Button type="submit">Resize</Button>
          </form>
        </div>
      )}
      {promoting && (
        <form
          className="flex items-end gap-2"
          aria-label="Promote snapshot to template"
          onSubmit={(e) => {
            e.preventDefault();
            const err = validateName(templateName);
            setErrors({ template: err });
            if (!err) promote.mutate(promoting);
          }}
        >
          <Field label="Template name" error={errors.template}>
            {(id, d) => (
              <input
                id={id}
                aria-describedby={d}
                aria-invalid={!!errors.template}
                className={inputCls}
                value={templateName}
                onChange={(e) => setTemplateName(e.target.value)}
              />
            )}
          </Field>
          <Button type="submit">Promote</Button>
        </form>
      )}
      {!rollbackPath && <p className="text-xs text-muted">Rollback appears here once the API offers it.</p>}
      <ErrorBox error={resize.error ?? snapshot.error ?? removeSnap.error ?? rollback.error ?? promote.error} />
    </div>
  );
}

export default function Volumes() {
  const { project } = useProject();
  const templates = useList<Template>('template').items;
  return (
    <ResourcePage<Volume>
      kind="volume"
      title="Volumes"
      noun="volume"
      columns={[
        { head: 'Name', cell: (v) => v.name },
        { head: 'Project', cell: (v) => v.project },
        { head: 'Size', cell: (v) => bytes(v.spec.size_bytes) },
        { head: 'Template', cell: (v) => templates.find((t) => t.id === v.spec.template_id)?.name ?? '—' },
        {
          head: 'VM',
          cell: (v) =>
            v.vm_id ? (
              <Link className="underline" to={`/vms/${v.vm_id}`}>
                {v.vm_id.slice(-8)}
              </Link>
            ) : (
              '—'
            ),
        },
        { head: 'Snapshots', cell: (v) => v.snapshots?.length ?? 0 },
        { head: 'Phase', cell: (v) => <Badge value={v.status?.phase ?? ''} /> },
      ]}
      expand={(v) => <VolumeDetail volume={v} />}
      create={(close) => (
        <SimpleForm
          label="Create volume"
          fields={[
            { key: 'name', label: 'Name' },
            { key: 'size', label: 'Size (MiB)', initial: '1024' },
            {
              key: 'template',
              label: 'Clone of template',
              type: 'select',
              options: [{ value: '', label: 'empty' }, ...templates.map((t) => ({ value: t.id, label: t.name }))],
            },
          ]}
          validate={(v) => ({ name: validateName(v.name), size: validateInt(v.size, 1, 64 * 1024 * 1024, 'size (MiB)') })}
          submit={(v) =>
            post('/v1/volumes', {
              name: v.name,
              project: targetProject(project),
              spec: { size_bytes: Number(v.size) * MIB, ...(v.template ? { template_id: v.template } : {}) },
            })
          }
          onDone={close}
        />
      )}
    />
  );
}
