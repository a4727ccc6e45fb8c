// Security groups and their rules: add a rule (validated: direction, protocol, port range,
// CIDR or remote group) and delete rules one by one through the rule endpoints.
import { useState, type FormEvent } from 'react';
import { useMutation } from '@tanstack/react-query';
import { del, post } from '../api/client';
import type { SecurityGroup, SecurityGroupRule } from '../api/types';
import { useCan } from '../auth';
import { SimpleForm } from '../components/Form';
import { ResourcePage } from '../components/ResourcePage';
import { Button, ErrorBox, Field, inputCls, Table } from '../components/ui';
import { validateName } from '../format';
import { useList } from '../live';
import { targetProject, useProject } from '../project';

export function validateRule(r: { protocol: string; port_min: string; port_max: string; cidr: string }) {
  const errors: Record<string, string | undefined> = {};
  const ports = r.protocol === 'tcp' || r.protocol === 'udp';
  if (ports) {
    const min = Number(r.port_min);
    const max = Number(r.port_max);
    if (!/^\d+$/.test(r.port_min) || min < 1 || min > 65535) errors.port_min = 'a port 1–65535';
    if (!/^\d+$/.test(r.port_max) || max < 1 || max > 65535) errors.port_max = 'a port 1–65535';
    else if (min > max) errors.port_max = 'must not be below the first port';
  }
  if (r.cidr && !/^[0-9a-fA-F.:]+\/\d{1,3}$/.test(r.cidr)) errors.cidr = 'a CIDR like 0.0.0.0/0 or ::/0';
  return errors;
}

function RuleEditor({ group }: { group: SecurityGroup }) {
  const can = useCan('write');
  const groups = useList<SecurityGroup>('security_group').items.filter((g) => g.project === group.project);
  const [r, setR] = useState({ direction: 'ingress', protocol: 'tcp', port_min: '22', port_max: '22', cidr: '0.0.0.0/0', remote: '', description: '' });
  const [errors, setErrors] = useState<Record<string, string | undefined>>({});
  const add = useMutation({
    mutationFn: () => {
      const ports = r.protocol === 'tcp' || r.protocol === 'udp';
      const rule: Record<string, unknown> = {
        direction: r.direction,
        protocol: r.protocol,
        port_min: ports ? Number(r.port_min) : 0,
        port_max: ports ? Number(r.port_max) : 0,
        description: r.description,
      };
      if (r.remote) rule.remote_group_id = r.remote;
      else if (r.cidr) rule.cidr = r.cidr;
      return post(`/v1/security-groups/${group.id}/rules`, rule);
    },
  });
  const remove = useMutation({ mutationFn: (ruleId: string) => del(`/v1/security-groups/${group.id}/rules/${ruleId}`) });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const errs = validateRule(r);
    setErrors(errs);
    if (Object.values(errs).every((x) => !x)) add.mutate();
  };
  const set = (k: keyof typeof r) => (e: { target: { value: string } }) => setR({ ...r, [k]: e.target.value });
  const rules: SecurityGroupRule[] = group.spec.rules ?? [];
  return (
    <div className="flex flex-col gap-3">
      <Table label={`Rules of ${group.name}`} head={['Direction', 'Protocol', 'Ports', 'From / to', 'Description', '']}>
        {rules.map((rule) => (
          <tr key={rule.id ?? JSON.stringify(rule)}>
            <td className="px-3 py-1">{rule.direction}</td>
            <td className="px-3 py-1">{rule.protocol}</td>
            <td className="px-3 py-1">{rule.port_min || rule.port_max ? `${rule.port_min}–${rule.port_max}` : 'all'}</td>
            <td className="px-3 py-1 font-mono text-xs">
              {rule.remote_group_id ? `group ${groups.find((g) => g.id === rule.remote_group_id)?.name ?? rule.remote_group_id}` : (rule.cidr ?? 'any')}
            </td>
            <td className="px-3 py-1">{rule.description}</td>
            <td className="px-3 py-1 text-right">{can && rule.id && <Button onClick={() => remove.mutate(rule.id!)}>Remove</Button>}</td>
          </tr>
        ))}
        {rules.length === 0 && (
          <tr>
            <td colSpan={6} className="px-3 py-2 text-sm text-muted">
              No rules: nothing is allowed in or out.
            </td>
          </tr>
        )}
      </Table>
      {can && (
        <form onSubmit={submit} noValidate className="flex flex-wrap items-end gap-2" aria-label={`Add a rule to ${group.name}`}>
          <Field label="Direction">
            {(id) => (
              <select id={id} className={inputCls} value={r.direction} onChange={set('direction')}>
                <option value="ingress">ingress</option>
                <option value="egress">egress</option>
              </select>
            )}
          </Field>
          <Field label="Protocol">
            {(id) => (
              <select id={id} className={inputCls} value={r.protocol} onChange={set('protocol')}>
                {['any', 'tcp', 'udp', 'icmp', 'icmpv6'].map((p) => (
                  <option key={p}>{p}</option>
                ))}
              </select>
            )}
          </Field>
          <Field label="First port" error={errors.port_min}>
            {(id, d) => (
              <input
                id={id}
                aria-describedby={d}
                aria-invalid={!!errors.port_min}
                className={`${inputCls} w-24`}
                value={r.port_min}
                onChange={set('port_min')}
              />
            )}
          </Field>
          <Field label="Last port" error={errors.port_max}>
            {(id, d) => (
              <input
                id={id}
                aria-describedby={d}
                aria-invalid={!!errors.port_max}
                className={`${inputCls} w-24`}
                value={r.port_max}
                onChange={set('port_max')}
              />
            )}
          </Field>
          <Field label="CIDR" error={errors.cidr}>
            {(id, d) => (
              <input id={id} aria-describedby={d} aria-invalid={!!errors.cidr} className={`${inputCls} w-36`} value={r.cidr} onChange={set('cidr')} />
            )}
          </Field>
          <Field label="or remote group">
            {(id) => (
              <select id={id} className={inputCls} value={r.remote} onChange={set('remote')}>
                <option value="">—</option>
                {groups.map((g) => (
                  <option key={g.id} value={g.id}>
                    {g.name}
                  </option>
                ))}
              </select>
            )}
          </Field>
          <Field label="Description">{(id) => <input id={id} className={inputCls} value={r.description} onChange={set('description')} />}</Field>
          <Button type="submit" disabled={add.isPending}>
            Add rule
          </Button>
        </form>
      )}
      <ErrorBox error={add.error ?? remove.error} onClose={() => (add.reset(), remove.reset())} />
    </div>
  );
}

export default function SecurityGroups() {
  const { project } = useProject();
  return (
    <ResourcePage<SecurityGroup>
      kind="security_group"
      title="Security groups"
      noun="security group"
      columns={[
        { head: 'Name', cell: (g) => g.name },
        { head: 'Project', cell: (g) => g.project },
        { head: 'Rules', cell: (g) => g.spec.rules?.length ?? 0 },
      ]}
      expand={(g) => <RuleEditor group={g} />}
      create={(close) => (
        <SimpleForm
          label="Create security group"
          fields={[
            { key: 'name', label: 'Name' },
            { key: 'ssh', label: 'Allow SSH (tcp/22) from anywhere', type: 'checkbox', initial: 'true' },
          ]}
          validate={(v) => ({ name: validateName(v.name) })}
          submit={(v) =>
            post('/v1/security-groups', {
              name: v.name,
              project: targetProject(project),
              spec: {
                rules:
                  v.ssh === 'true'
                    ? [
                        { direction: 'ingress', protocol: 'tcp', port_min: 22, port_max: 22, cidr: '0.0.0.0/0', description: 'ssh' },
                        { direction: 'egress', protocol: 'any', port_min: 0, port_max: 0, cidr: '0.0.0.0/0', description: 'all out' },
                      ]
                    : [],
              },
            })
          }
          onDone={close}
        />
      )}
    />
  );
}
