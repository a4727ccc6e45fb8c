import { Link } from 'react-router';
import { post } from '../api/client';
import type { Network, Nic, SecurityGroup } from '../api/types';
import { SimpleForm } from '../components/Form';
import { ResourcePage } from '../components/ResourcePage';
import { validateName } from '../format';
import { useList } from '../live';
import { inProject, targetProject, useProject } from '../project';

export default function Nics() {
  const { project } = useProject();
  const target = targetProject(project);
  const networks = useList<Network>('network').items;
  const groups = useList<SecurityGroup>('security_group').items;
  const netName = (id: string) => networks.find((n) => n.id === id)?.name ?? id;
  return (
    <ResourcePage<Nic>
      kind="nic"
      title="Network interfaces"
      noun="NIC"
      columns={[
        { head: 'Name', cell: (n) => n.name },
        { head: 'Network', cell: (n) => netName(n.spec.network_id) },
        { head: 'MAC', cell: (n) => <span className="font-mono text-xs">{n.spec.mac_address ?? '—'}</span> },
        { head: 'IPv4', cell: (n) => <span className="font-mono text-xs">{n.spec.ipv4_address ?? '—'}</span> },
        {
          head: 'VM',
          cell: (n) =>
            n.vm_id ? (
              <Link className="underline" to={`/vms/${n.vm_id}`}>
                {n.vm_id.slice(-8)}
              </Link>
            ) : (
              '—'
            ),
        },
        { head: 'Owned', cell: (n) => (n.owner_vm_id ? 'by its VM' : 'no') },
      ]}
      create={(close) => (
        <SimpleForm
          label="Create NIC"
          fields={[
            { key: 'name', label: 'Name' },
            {
              key: 'network',
              label: 'Network',
              type: 'select',
              options: [
                { value: '', label: 'choose…' },
                ...inProject(networks, target).map((n) => ({ value: n.id, label: `${n.name} (${n.spec.ipv4_prefix ?? n.spec.ipv6_prefix})` })),
              ],
            },
            { key: 'ipv4', label: 'IPv4 address', hint: 'optional: the first free one otherwise' },
            {
              key: 'sgs',
              label: 'Security groups',
              hint: `names, comma-separated (${
                inProject(groups, target)
                  .map((g) => g.name)
                  .join(', ') || 'none yet'
              })`,
            },
          ]}
          validate={(v) => ({
            name: validateName(v.name),
            network: v.network ? undefined : 'choose a network',
            ipv4: v.ipv4 && !/^\d{1,3}(\.\d{1,3}){3}$/.test(v.ipv4) ? 'an IPv4 address like 10.0.0.5' : undefined,
            sgs: v.sgs
              .split(',')
              .map((s) => s.trim())
              .filter(Boolean)
              .find((s) => !groups.some((g) => g.name === s && g.project === target))
              ? 'unknown security group name'
              : undefined,
          })}
          submit={(v) =>
            post('/v1/nics', {
              name: v.name,
              project: target,
              spec: {
                network_id: v.network,
                ...(v.ipv4 ? { ipv4_address: v.ipv4 } : {}),
                security_group_ids: v.sgs
                  .split(',')
                  .map((s) => s.trim())
                  .filter(Boolean)
                  .map((s) => groups.find((g) => g.name === s && g.project === target)!.id),
              },
            })
          }
          onDone={close}
        />
      )}
    />
  );
}
