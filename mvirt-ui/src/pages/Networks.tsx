import { post } from '../api/client';
import type { Network } from '../api/types';
import { SimpleForm } from '../components/Form';
import { ResourcePage } from '../components/ResourcePage';
import { Badge } from '../components/ui';
import { parseLabels, validateCidr4, validateCidr6, validateLabels, validateName } from '../format';
import { targetProject, useProject } from '../project';

const list = (v: string) =>
  v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

export default function Networks() {
  const { project } = useProject();
  return (
    <ResourcePage<Network>
      kind="network"
      title="Networks"
      noun="network"
      deleteQuery={{ force: 'true' }}
      columns={[
        { head: 'Name', cell: (n) => n.name },
        { head: 'Project', cell: (n) => n.project },
        { head: 'IPv4', cell: (n) => <span className="font-mono text-xs">{n.spec.ipv4_prefix ?? '—'}</span> },
        { head: 'IPv6', cell: (n) => <span className="font-mono text-xs">{n.spec.ipv6_prefix ?? '—'}</span> },
        { head: 'Public', cell: (n) => (n.spec.is_public ? 'yes' : 'no') },
        { head: 'Phase', cell: (n) => <Badge value={n.status?.phase ?? ''} /> },
      ]}
      create={(close) => (
        <SimpleForm
          label="Create network"
          fields={[
            { key: 'name', label: 'Name' },
            { key: 'ipv4', label: 'IPv4 prefix', hint: 'e.g. 10.0.0.0/24' },
            { key: 'ipv6', label: 'IPv6 prefix', hint: 'optional, e.g. fd00::/64' },
            { key: 'dns', label: 'DNS servers', hint: 'comma-separated, optional' },
            { key: 'public', label: 'Public (NAT to the outside)', type: 'checkbox' },
            { key: 'labels', label: 'Labels', hint: 'k=v,k2=v2' },
          ]}
          validate={(v) => ({
            name: validateName(v.name),
            ipv4: validateCidr4(v.ipv4, !v.ipv6),
            ipv6: validateCidr6(v.ipv6),
            labels: validateLabels(v.labels),
          })}
          submit={(v) =>
            post('/v1/networks', {
              name: v.name,
              project: targetProject(project),
              labels: parseLabels(v.labels),
              spec: {
                ...(v.ipv4 ? { ipv4_prefix: v.ipv4 } : {}),
                ...(v.ipv6 ? { ipv6_prefix: v.ipv6 } : {}),
                dns_servers: list(v.dns),
                is_public: v.public === 'true',
              },
            })
          }
          onDone={close}
        />
      )}
    />
  );
}
