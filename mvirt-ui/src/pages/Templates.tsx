// Templates: importing one starts a download/conversion on every node; progress is live from
// the template's status (import_bytes_done / import_bytes_total: the least advanced node's at
// the top, each node's own in `status.nodes`, shown in the template's panel). A running import
// can be cancelled.
import { useMutation } from '@tanstack/react-query';
import { post } from '../api/client';
import type { Node, Template } from '../api/types';
import { useCan } from '../auth';
import { SimpleForm } from '../components/Form';
import { ResourcePage } from '../components/ResourcePage';
import { Badge, Button, ErrorBox, Table } from '../components/ui';
import { ago, bytes, validateName } from '../format';
import { useList } from '../live';
import { targetProject, useProject } from '../project';

export function Progress({ done, total }: { done?: number | null; total?: number | null }) {
  if (!total) return <span className="text-muted">{done ? bytes(done) : '—'}</span>;
  const pct = Math.min(100, Math.round(((done ?? 0) / total) * 100));
  return (
    <span className="inline-flex items-center gap-2">
      <progress max={100} value={pct} aria-label="import progress" className="h-2 w-24" />
      <span className="text-xs">
        {pct}% of {bytes(total)}
      </span>
    </span>
  );
}

const URL_RE = /^(file|https?):\/\/\S+$/;

/** Phases in which an import may still be running somewhere (what cancel stops). */
const IMPORTING = new Set(['', 'pending', 'importing', 'creating']);

function CancelImport({ template }: { template: Template }) {
  const can = useCan('write');
  const cancel = useMutation({ mutationFn: () => post(`/v1/templates/${template.id}/cancel`) });
  if (!can || !IMPORTING.has(template.status?.phase ?? 'pending')) return null;
  return (
    <>
      <Button onClick={() => cancel.mutate()} disabled={cancel.isPending}>
        Cancel import
      </Button>
      <ErrorBox error={cancel.error} onClose={() => cancel.reset()} />
    </>
  );
}

/** Each node's own import: phase, progress and message. */
export function PerNode({ template }: { template: Template }) {
  const nodes = useList<Node>('node').items;
  const reports = Object.entries(template.status?.nodes ?? {});
  if (!reports.length) return <p className="text-sm text-muted">No node has reported on this template yet.</p>;
  return (
    <Table label={`Import of ${template.name} per node`} head={['Node', 'Phase', 'Import', 'Message', 'Updated']}>
      {reports.map(([nodeId, r]) => (
        <tr key={nodeId} data-testid="template-node-row" data-name={nodes.find((n) => n.id === nodeId)?.name ?? nodeId}>
          <td className="px-3 py-2">{nodes.find((n) => n.id === nodeId)?.name ?? nodeId}</td>
          <td className="px-3 py-2">
            <Badge value={r.phase} />
          </td>
          <td className="px-3 py-2">
            <Progress done={r.import_bytes_done} total={r.import_bytes_total} />
          </td>
          <td className="px-3 py-2 text-xs">{r.message || '—'}</td>
          <td className="px-3 py-2">{ago(r.updated_at)}</td>
        </tr>
      ))}
    </Table>
  );
}

export default function Templates() {
  const { project } = useProject();
  return (
    <ResourcePage<Template>
      kind="template"
      title="Templates"
      noun="template"
      projectScoped={false}
      columns={[
        { head: 'Name', cell: (t) => t.name },
        { head: 'Format', cell: (t) => t.spec.format },
        { head: 'Source', cell: (t) => <span className="font-mono text-xs break-all">{t.spec.source_url}</span> },
        { head: 'Phase', cell: (t) => <Badge value={t.status?.phase ?? ''} /> },
        { head: 'Import', cell: (t) => <Progress done={t.status?.import_bytes_done} total={t.status?.import_bytes_total} /> },
        { head: 'Message', cell: (t) => <span className="text-xs">{t.status?.message}</span> },
      ]}
      extraActions={(t) => <CancelImport template={t} />}
      expand={(t) => <PerNode template={t} />}
      create={(close) => (
        <SimpleForm
          label="Import template"
          submitLabel="Import"
          fields={[
            { key: 'name', label: 'Name' },
            { key: 'source', label: 'Disk image URL', hint: 'file:// or http(s)://' },
            {
              key: 'format',
              label: 'Format',
              type: 'select',
              options: [
                { value: 'raw', label: 'raw' },
                { value: 'qcow2', label: 'qcow2' },
              ],
              initial: 'raw',
            },
            { key: 'sha256', label: 'SHA-256', hint: 'optional; checked after the download' },
            { key: 'kernel', label: 'Kernel URL', hint: 'optional, for direct kernel boot' },
            { key: 'initramfs', label: 'Initramfs URL', hint: 'optional' },
            { key: 'cmdline', label: 'Kernel command line', hint: 'optional' },
          ]}
          validate={(v) => ({
            name: validateName(v.name),
            source: URL_RE.test(v.source) ? undefined : 'a file://, http:// or https:// URL',
            sha256: v.sha256 && !/^[0-9a-f]{64}$/.test(v.sha256) ? '64 lowercase hex digits' : undefined,
            kernel: v.kernel && !URL_RE.test(v.kernel) ? 'a URL' : undefined,
            initramfs: v.initramfs && !URL_RE.test(v.initramfs) ? 'a URL' : undefined,
          })}
          submit={(v) =>
            post('/v1/templates', {
              name: v.name,
              project: targetProject(project),
              spec: {
                source_url: v.source,
                format: v.format,
                ...(v.sha256 ? { sha256: v.sha256 } : {}),
                ...(v.kernel ? { kernel_url: v.kernel } : {}),
                ...(v.initramfs ? { initramfs_url: v.initramfs } : {}),
                ...(v.cmdline ? { cmdline: v.cmdline } : {}),
              },
            })
          }
          onDone={close}
        />
      )}
    />
  );
}
