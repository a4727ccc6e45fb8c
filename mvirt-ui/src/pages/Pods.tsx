// The pod list (live from the event stream, windowed) and the create dialog: containers (image,
// command, args, env, limits, restart policy, ports), size, networks and security groups, node
// selector, registry credentials (write-only: password fields, never shown again).
import { useMemo, useState, type FormEvent, type MouseEvent, type ReactNode } from 'react';
import { useMutation } from '@tanstack/react-query';
import { useNavigate } from 'react-router';
import { post } from '../api/client';
import type { Network, Node, Pod, SecurityGroup } from '../api/types';
import { useCan } from '../auth';
import { Badge, Button, Dialog, Empty, ErrorBox, Field, inputCls, PageHeader } from '../components/ui';
import { WindowedTable } from '../components/WindowedTable';
import { bytes } from '../format';
import { useList } from '../live';
import { inProject, targetProject, useProject } from '../project';
import {
  emptyContainer,
  emptyCredential,
  emptyPodForm,
  formOk,
  podCreateBody,
  validatePodForm,
  type ContainerForm,
  type CredentialForm,
  type PodForm,
  type PodFormErrors,
} from '../pods/form';

/** The phase to show: the node's report, else where scheduling stands. */
export function podPhase(p: Pod): string {
  if (p.status?.phase) return p.status.phase;
  if (p.scheduling?.state === 'pending') return 'pending';
  return 'creating';
}

/** "2/3 running" from the node's per-container report. */
export function containerSummary(p: Pod): string {
  const total = p.spec.containers?.length ?? 0;
  const running = (p.status?.containers ?? []).filter((c) => c.state === 'running').length;
  return `${running}/${total} running`;
}

export const restarts = (p: Pod) => (p.status?.containers ?? []).reduce((n, c) => n + (c.restart_count ?? 0), 0);

export default function Pods() {
  const { project } = useProject();
  const pods = useList<Pod>('pod');
  const nodes = useList<Node>('node');
  const can = useCan('write');
  const [creating, setCreating] = useState(false);
  const [filter, setFilter] = useState('');
  const navigate = useNavigate();
  const followLink = (e: MouseEvent) => {
    const a = (e.target as HTMLElement).closest('a');
    if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
    e.preventDefault();
    navigate(a.getAttribute('href')!);
  };
  const nodeNames = useMemo(() => new Map(nodes.items.map((n) => [n.id, n.name])), [nodes.items]);
  const shown = useMemo(() => {
    const f = filter.trim().toLowerCase();
    const list = inProject(pods.items, project).slice().reverse();
    return f ? list.filter((p) => p.name.includes(f) || podPhase(p).includes(f)) : list;
  }, [pods.items, project, filter]);

  return (
    <div>
      <PageHeader
        title="Pods"
        actions={
          can && (
            <Button variant="primary" onClick={() => setCreating(true)}>
              Create pod
            </Button>
          )
        }
      >
        <span data-testid="pods-shown">{pods.isLoading ? 'loading…' : `${shown.length} shown`}</span>
      </PageHeader>
      <div className="mb-3">
        <label className="text-sm">
          <span className="sr-only">Filter pods</span>
          <input className={inputCls} placeholder="Filter by name or phase" value={filter} onChange={(e) => setFilter(e.target.value)} />
        </label>
      </div>
      <ErrorBox error={pods.error} />
      {shown.length === 0 && !pods.isLoading ? (
        <Empty>No pods{project === '*' ? '' : ` in project ${project}`}.</Empty>
      ) : (
        <div onClick={followLink}>
          <WindowedTable
            label="Pods"
            fixed
            widths={['22%', undefined, '7rem', '8rem', '6rem', undefined, '4rem', '6rem', undefined]}
            estimate={37}
            head={['Name', 'Project', 'Phase', 'Containers', 'Restarts', 'Node', 'vCPU', 'Memory', 'Addresses']}
            items={shown}
            itemKey={(p) => p.id}
            renderItem={(p) => (
              <tr data-testid="pod-row" data-name={p.name}>
                <td className="truncate px-3 py-2">
                  <a href={`/pods/${p.id}`} className="font-medium underline">
                    {p.name}
                  </a>
                </td>
                <td className="truncate px-3 py-2">{p.project}</td>
                <td className="px-3 py-2" data-testid="pod-phase">
                  <Badge value={podPhase(p)} />
                </td>
                <td className="px-3 py-2">{containerSummary(p)}</td>
                <td className="px-3 py-2">{restarts(p)}</td>
                <td className="truncate px-3 py-2">{p.node_id ? (nodeNames.get(p.node_id) ?? p.node_id.slice(-8)) : '—'}</td>
                <td className="px-3 py-2">{p.spec.vcpus}</td>
                <td className="px-3 py-2">{bytes(p.spec.memory_bytes)}</td>
                <td className="truncate px-3 py-2 font-mono text-xs">{p.status?.ipv4_addresses?.join(', ') || '—'}</td>
              </tr>
            )}
          />
        </div>
      )}
      {creating && <CreatePod onClose={() => setCreating(false)} />}
    </div>
  );
}

const noErrors = (): PodFormErrors => ({ container: [], credential: [] });

export function CreatePod({ onClose }: { onClose: () => void }) {
  const { project } = useProject();
  const target = targetProject(project);
  const networks = inProject(useList<Network>('network').items, target);
  const groups = inProject(useList<SecurityGroup>('security_group').items, target);
  const navigate = useNavigate();
  const [f, setF] = useState<PodForm>(emptyPodForm);
  const [errors, setErrors] = useState<PodFormErrors>(noErrors);
  const create = useMutation({
    mutationFn: (body: unknown) => post<Pod>('/v1/pods', body),
    onSuccess: (pod) => {
      onClose();
      navigate(`/pods/${pod.id}`);
    },
  });
  const set = (k: 'name' | 'hostname' | 'labels' | 'vcpus' | 'memoryMib' | 'nodeSelector') => (v: string) => setF({ ...f, [k]: v });
  const toggle = (k: 'networks' | 'securityGroups', id: string) => setF({ ...f, [k]: f[k].includes(id) ? f[k].filter((x) => x !== id) : [...f[k], id] });
  const setContainer = (i: number, c: Partial<ContainerForm>) => setF({ ...f, containers: f.containers.map((x, j) => (j === i ? { ...x, ...c } : x)) });
  const setCredential = (i: number, c: Partial<CredentialForm>) => setF({ ...f, credentials: f.credentials.map((x, j) => (j === i ? { ...x, ...c } : x)) });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const errs = validatePodForm(f);
    setErrors(errs);
    if (formOk(errs)) create.mutate(podCreateBody(f, target));
  };
  const text = (value: string, onChange: (v: string) => void, error?: string, extra: Record<string, unknown> = {}) =>
    function TextInput(id: string, d?: string) {
      return (
        <input id={id} aria-describedby={d} aria-invalid={!!error} className={inputCls} value={value} onChange={(e) => onChange(e.target.value)} {...extra} />
      );
    };

  return (
    <Dialog title={`Create pod in ${target}`} open onClose={onClose}>
      <form onSubmit={submit} className="flex flex-col gap-4" noValidate aria-label="Create pod">
        <div className="grid gap-3 md:grid-cols-2">
          <Field label="Name" error={errors.name}>
            {text(f.name, set('name'), errors.name, { name: 'name' })}
          </Field>
          <Field label="Hostname" error={errors.hostname} hint="default: the name">
            {text(f.hostname, set('hostname'), errors.hostname)}
          </Field>
          <div className="grid grid-cols-2 gap-3">
            <Field label="vCPUs" error={errors.vcpus}>
              {text(f.vcpus, set('vcpus'), errors.vcpus, { inputMode: 'numeric' })}
            </Field>
            <Field label="Memory (MiB)" error={errors.memoryMib}>
              {text(f.memoryMib, set('memoryMib'), errors.memoryMib, { inputMode: 'numeric' })}
            </Field>
          </div>
          <Field label="Node selector" hint="node id, node name, or k=v,k2=v2 labels">
            {text(f.nodeSelector, set('nodeSelector'))}
          </Field>
          <Field label="Labels" error={errors.labels} hint="k=v,k2=v2">
            {text(f.labels, set('labels'), errors.labels)}
          </Field>
          <label className="flex items-center gap-2 self-end text-sm">
            <input type="checkbox" checked={f.start} onChange={(e) => setF({ ...f, start: e.target.checked })} /> Start once created
          </label>
        </div>

        {f.containers.map((c, i) => (
          <ContainerFields
            key={i}
            index={i}
            c={c}
            errors={errors.container[i] ?? {}}
            onChange={(v) => setContainer(i, v)}
            onRemove={f.containers.length > 1 ? () => setF({ ...f, containers: f.containers.filter((_, j) => j !== i) }) : undefined}
          />
        ))}
        {errors.containers && <p className="text-xs text-danger">{errors.containers}</p>}
        <div>
          <Button onClick={() => setF({ ...f, containers: [...f.containers, emptyContainer()] })}>Add a container</Button>
        </div>

        <div className="grid gap-3 md:grid-cols-2">
          <fieldset className="flex flex-col gap-1">
            <legend className="text-sm font-medium">Networks (a NIC on each)</legend>
            {networks.length === 0 && <span className="text-xs text-muted">No networks in {target}.</span>}
            {networks.map((n) => (
              <label key={n.id} className="flex items-center gap-2 text-sm">
                <input type="checkbox" checked={f.networks.includes(n.id)} onChange={() => toggle('networks', n.id)} />
                {n.name} <span className="text-muted">{n.spec.ipv4_prefix}</span>
              </label>
            ))}
          </fieldset>
          <fieldset className="flex flex-col gap-1">
            <legend className="text-sm font-medium">Security groups (on every NIC)</legend>
            {groups.length === 0 && <span className="text-xs text-muted">No security groups in {target}.</span>}
            {groups.map((g) => (
              <label key={g.id} className="flex items-center gap-2 text-sm">
                <input type="checkbox" checked={f.securityGroups.includes(g.id)} onChange={() => toggle('securityGroups', g.id)} />
                {g.name}
              </label>
            ))}
          </fieldset>
        </div>

        <fieldset className="flex flex-col gap-2">
          <legend className="text-sm font-medium">Registry credentials</legend>
          <p className="text-xs text-muted">For private registries. Sent once; the API never shows the password or token again.</p>
          {f.credentials.map((r, i) => {
            const e = errors.credential[i] ?? {};
            return (
              <div
                key={i}
                className="grid items-start gap-2 rounded-md border border-line p-2 md:grid-cols-2"
                role="group"
                aria-label={`Registry credential ${i + 1}`}
              >
                <Field label="Registry" error={e.registry}>
                  {text(r.registry, (v) => setCredential(i, { registry: v }), e.registry, { placeholder: 'host:5000' })}
                </Field>
                <Field label="Username" error={e.username}>
                  {text(r.username, (v) => setCredential(i, { username: v }), e.username, { autoComplete: 'off' })}
                </Field>
                <Field label="Password" error={e.password}>
                  {text(r.password, (v) => setCredential(i, { password: v }), e.password, { type: 'password', autoComplete: 'new-password' })}
                </Field>
                <Field label="Token (instead)" error={e.token}>
                  {text(r.token, (v) => setCredential(i, { token: v }), e.token, { type: 'password', autoComplete: 'new-password' })}
                </Field>
                <div className="md:col-span-2">
                  <Button onClick={() => setF({ ...f, credentials: f.credentials.filter((_, j) => j !== i) })}>Remove credential {i + 1}</Button>
                </div>
              </div>
            );
          })}
          <div>
            <Button onClick={() => setF({ ...f, credentials: [...f.credentials, emptyCredential()] })}>Add registry credentials</Button>
          </div>
        </fieldset>

        <div>
          <ErrorBox error={create.error} />
          <div className="flex justify-end gap-2">
            <Button onClick={onClose}>Cancel</Button>
            <Button variant="primary" type="submit" disabled={create.isPending}>
              {create.isPending ? 'Creating…' : 'Create'}
            </Button>
          </div>
        </div>
      </form>
    </Dialog>
  );
}

function ContainerFields({
  index,
  c,
  errors,
  onChange,
  onRemove,
}: {
  index: number;
  c: ContainerForm;
  errors: Partial<Record<keyof ContainerForm, string>>;
  onChange: (c: Partial<ContainerForm>) => void;
  onRemove?: () => void;
}) {
  const input = (k: Exclude<keyof ContainerForm, 'restartPolicy'>, extra: Record<string, unknown> = {}) =>
    function ContainerInput(id: string, d?: string): ReactNode {
      return (
        <input
          id={id}
          aria-describedby={d}
          aria-invalid={!!errors[k]}
          className={inputCls}
          value={c[k]}
          onChange={(e) => onChange({ [k]: e.target.value })}
          {...extra}
        />
      );
    };
  return (
    <fieldset className="grid gap-3 rounded-md border border-line p-3 md:grid-cols-2" aria-label={`Container ${index + 1}`}>
      <legend className="px-1 text-sm font-semibold">Container {index + 1}</legend>
      <Field label="Container name" error={errors.name}>
        {input('name')}
      </Field>
      <Field label="Image" error={errors.image} hint="e.g. 10.0.0.1:5000/httpd:2">
        {input('image')}
      </Field>
      <Field label="Command" error={errors.command} hint="replaces the image's entrypoint; quote with ' or &quot;">
        {input('command', { className: `${inputCls} font-mono` })}
      </Field>
      <Field label="Arguments" error={errors.args}>
        {input('args', { className: `${inputCls} font-mono` })}
      </Field>
      <Field label="Environment (KEY=value, one per line)" error={errors.env}>
        {(id, d) => (
          <textarea
            id={id}
            aria-describedby={d}
            aria-invalid={!!errors.env}
            rows={2}
            className={`${inputCls} font-mono`}
            value={c.env}
            onChange={(e) => onChange({ env: e.target.value })}
          />
        )}
      </Field>
      <Field label="Working directory" error={errors.workingDir}>
        {input('workingDir')}
      </Field>
      <div className="grid grid-cols-2 gap-3">
        <Field label="CPU limit (millicores)" error={errors.cpuMillis} hint="optional">
          {input('cpuMillis', { inputMode: 'numeric' })}
        </Field>
        <Field label="Memory limit (MiB)" error={errors.memoryMib} hint="optional">
          {input('memoryMib', { inputMode: 'numeric' })}
        </Field>
      </div>
      <div className="grid grid-cols-2 gap-3">
        <Field label="Restart policy">
          {(id) => (
            <select
              id={id}
              className={inputCls}
              value={c.restartPolicy}
              onChange={(e) => onChange({ restartPolicy: e.target.value as ContainerForm['restartPolicy'] })}
            >
              <option value="always">always</option>
              <option value="on_failure">on failure</option>
              <option value="never">never</option>
            </select>
          )}
        </Field>
        <Field label="Ports" error={errors.ports} hint="[name:]port[/udp], …">
          {input('ports', { placeholder: 'http:80' })}
        </Field>
      </div>
      {onRemove && (
        <div className="md:col-span-2">
          <Button onClick={onRemove}>Remove container {index + 1}</Button>
        </div>
      )}
    </fieldset>
  );
}
