// Templates: importing one starts a download/conversion on every node; progress is live from
// the template's status (import_bytes_done / import_bytes_total, per node).
import { post } from '../api/client';
import type { Template } from '../api/types';
import { SimpleForm } from '../components/Form';
import { ResourcePage } from '../components/ResourcePage';
import { Badge } from '../components/ui';
import { bytes, validateName } from '../format';
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
