// The VM list (live from the event stream) and the create dialog.
import { memo, useLayoutEffect, useMemo, useRef, useState, type FormEvent, type MouseEvent } from 'react';
import { useWindowVirtualizer } from '@tanstack/react-virtual';
import { useMutation } from '@tanstack/react-query';
import { useNavigate } from 'react-router';
import { post } from '../api/client';
import type { Network, Node, SecurityGroup, Template, Vm } from '../api/types';
import { useCan } from '../auth';
import { Badge, Button, Dialog, Empty, ErrorBox, Field, inputCls, PageHeader } from '../components/ui';
import { bytes, MIB, validateInt, validateName } from '../format';
import { useList } from '../live';
import { inProject, targetProject, useProject } from '../project';

export function vmPhase(vm: Vm): string {
  if (vm.status?.phase) return vm.status.phase;
  if (vm.scheduling?.state === 'pending') return 'pending';
  return 'creating';
}

const VmRow = memo(function VmRow({ vm, nodeName, index }: { vm: Vm; nodeName: string; index: number }) {
  const addrs = vm.status?.ipv4_addresses?.join(', ');
  return (
    <tr data-testid="vm-row" data-name={vm.name} aria-rowindex={index} className="h-[37px]">
      <td className="truncate px-3 py-2">
        {/* A plain link (one click handler on the table navigates): a router Link per row costs
            several hooks each, which shows with 1,000 rows. */}
        <a href={`/vms/${vm.id}`} className="font-medium underline">
          {vm.name}
        </a>
      </td>
      <td className="px-3 py-2">{vm.project}</td>
      <td className="px-3 py-2" data-testid="vm-phase">
        <Badge value={vmPhase(vm)} />
      </td>
      <td className="px-3 py-2">{nodeName}</td>
      <td className="px-3 py-2">{vm.spec.vcpus}</td>
      <td className="px-3 py-2">{bytes(vm.spec.memory_bytes)}</td>
      <td className="truncate px-3 py-2 font-mono text-xs">{addrs || '—'}</td>
    </tr>
  );
});

const ROW_HEIGHT = 37;

/** The rows, newest first, windowed: only the rows near the viewport are in the DOM, so a list of
 *  thousands renders as fast as a list of thirty (laying out every row of a long table was most
 *  of the first render's time). */
function VmTable({ vms, nodeNames }: { vms: Vm[]; nodeNames: Map<string, string> }) {
  const ordered = useMemo(() => vms.slice().reverse(), [vms]);
  const body = useRef<HTMLTableSectionElement>(null);
  const [margin, setMargin] = useState(0);
  useLayoutEffect(() => setMargin((body.current?.getBoundingClientRect().top ?? 0) + window.scrollY), []);
  const rows = useWindowVirtualizer({ count: ordered.length, estimateSize: () => ROW_HEIGHT, overscan: 10, scrollMargin: margin });
  const items = rows.getVirtualItems();
  const before = items.length ? items[0].start - margin : 0;
  const after = items.length ? rows.getTotalSize() - (items[items.length - 1].end - margin) : 0;
  return (
    <div className="rounded-lg border border-line">
      <table className="w-full table-fixed text-left text-sm" aria-label="VMs" aria-rowcount={ordered.length + 1}>
        <thead className="bg-panel text-muted">
          <tr aria-rowindex={1}>
            {['Name', 'Project', 'Phase', 'Node', 'vCPU', 'Memory', 'Addresses'].map((h) => (
              <th key={h} scope="col" className="px-3 py-2 font-medium">
                {h}
              </th>
            ))}
          </tr>
        </thead>
        <tbody ref={body} className="divide-y divide-line">
          {before > 0 && <tr aria-hidden="true" style={{ height: before }} />}
          {items.map((item) => {
            const vm = ordered[item.index];
            return <VmRow key={vm.id} vm={vm} index={item.index + 2} nodeName={vm.node_id ? (nodeNames.get(vm.node_id) ?? vm.node_id.slice(-8)) : '—'} />;
          })}
          {after > 0 && <tr aria-hidden="true" style={{ height: after }} />}
        </tbody>
      </table>
    </div>
  );
}

export function VmList() {
  const { project } = useProject();
  const vms = useList<Vm>('vm');
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
    const list = inProject(vms.items, project);
    return f ? list.filter((v) => v.name.includes(f) || vmPhase(v).includes(f)) : list;
  }, [vms.items, project, filter]);

  return (
    <div>
      <PageHeader
        title="Virtual machines"
        actions={
          can && (
            <Button variant="primary" onClick={() => setCreating(true)}>
              Create VM
            </Button>
          )
        }
      >
        <span data-testid="vms-shown">{vms.isLoading ? 'loading…' : `${shown.length} shown`}</span>
      </PageHeader>
      <div className="mb-3">
        <label className="text-sm">
          <span className="sr-only">Filter VMs</span>
          <input className={inputCls} placeholder="Filter by name or phase" value={filter} onChange={(e) => setFilter(e.target.value)} />
        </label>
      </div>
      <ErrorBox error={vms.error} />
      {shown.length === 0 && !vms.isLoading ? (
        <Empty>No VMs{project === '*' ? '' : ` in project ${project}`}.</Empty>
      ) : (
        <div onClick={followLink}>
          <VmTable vms={shown} nodeNames={nodeNames} />
        </div>
      )}
      {creating && <CreateVm onClose={() => setCreating(false)} />}
    </div>
  );
}

interface VmForm {
  name: string;
  template: string;
  rootMib: string;
  vcpus: string;
  memoryMib: string;
  hostname: string;
  networks: string[];
  securityGroups: string[];
  sshKeys: string;
  userData: string;
  nodeSelector: string;
}

const SIZES: { label: string; vcpus: number; memoryMib: number }[] = [
  { label: 'tiny (1 vCPU, 256 MiB)', vcpus: 1, memoryMib: 256 },
  { label: 'small (1 vCPU, 1 GiB)', vcpus: 1, memoryMib: 1024 },
  { label: 'medium (2 vCPU, 4 GiB)', vcpus: 2, memoryMib: 4096 },
  { label: 'large (4 vCPU, 8 GiB)', vcpus: 4, memoryMib: 8192 },
];

export function validateVmForm(f: VmForm): Partial<Record<keyof VmForm, string>> {
  const errors: Partial<Record<keyof VmForm, string>> = {};
  const name = validateName(f.name);
  if (name) errors.name = name;
  const vcpus = validateInt(f.vcpus, 1, 256, 'vCPUs');
  if (vcpus) errors.vcpus = vcpus;
  const mem = validateInt(f.memoryMib, 16, 4 * 1024 * 1024, 'memory (MiB)');
  if (mem) errors.memoryMib = mem;
  if (f.template) {
    const root = validateInt(f.rootMib, 1, 64 * 1024 * 1024, 'root disk (MiB)');
    if (root) errors.rootMib = root;
  }
  if (f.hostname && validateName(f.hostname)) errors.hostname = 'a hostname is a DNS label (lowercase letters, digits, "-")';
  const badKey = f.sshKeys
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .find((k) => !/^(ssh-|ecdsa-|sk-)\S+ \S+/.test(k));
  if (badKey) errors.sshKeys = `not an SSH public key: ${badKey.slice(0, 30)}`;
  return errors;
}

export function vmCreateBody(f: VmForm, project: string) {
  const spec: Record<string, unknown> = {
    vcpus: Number(f.vcpus),
    memory_bytes: Number(f.memoryMib) * MIB,
    network_interfaces: f.networks.map((network_id) => ({ network_id, security_group_ids: f.securityGroups })),
    ssh_authorized_keys: f.sshKeys
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean),
  };
  if (f.template) spec.root_volume = { template_id: f.template, size_bytes: Number(f.rootMib) * MIB };
  if (f.hostname) spec.hostname = f.hostname;
  if (f.userData) spec.user_data = f.userData;
  if (f.nodeSelector.trim()) spec.node_selector = f.nodeSelector.trim();
  return { name: f.name, project, spec };
}

function CreateVm({ onClose }: { onClose: () => void }) {
  const { project } = useProject();
  const target = targetProject(project);
  const templates = useList<Template>('template');
  const networks = inProject(useList<Network>('network').items, target);
  const groups = inProject(useList<SecurityGroup>('security_group').items, target);
  const navigate = useNavigate();
  const [f, setF] = useState<VmForm>({
    name: '',
    template: '',
    rootMib: '1024',
    vcpus: '1',
    memoryMib: '256',
    hostname: '',
    networks: [],
    securityGroups: [],
    sshKeys: '',
    userData: '',
    nodeSelector: '',
  });
  const [errors, setErrors] = useState<Partial<Record<keyof VmForm, string>>>({});
  const create = useMutation({
    mutationFn: (body: unknown) => post<Vm>('/v1/vms', body),
    onSuccess: (vm) => {
      onClose();
      navigate(`/vms/${vm.id}`);
    },
  });
  const set = (k: keyof VmForm) => (e: { target: { value: string } }) => setF({ ...f, [k]: e.target.value });
  const toggle = (k: 'networks' | 'securityGroups', id: string) => setF({ ...f, [k]: f[k].includes(id) ? f[k].filter((x) => x !== id) : [...f[k], id] });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const errs = validateVmForm(f);
    setErrors(errs);
    if (Object.keys(errs).length === 0) create.mutate(vmCreateBody(f, target));
  };
  const input =
    (k: keyof VmForm, extra: Record<string, unknown> = {}) =>
    (id: string, d?: string) => (
      <input id={id} aria-describedby={d} aria-invalid={!!errors[k]} className={inputCls} value={f[k] as string} onChange={set(k)} {...extra} />
    );

  return (
    <Dialog title={`Create VM in ${target}`} open onClose={onClose}>
      <form onSubmit={submit} className="grid gap-3 md:grid-cols-2" noValidate aria-label="Create VM">
        <Field label="Name" error={errors.name}>
          {input('name', { name: 'name' })}
        </Field>
        <Field label="Hostname" error={errors.hostname} hint="default: the name">
          {input('hostname')}
        </Field>
        <Field label="Template (root disk)" error={errors.template}>
          {(id) => (
            <select id={id} className={inputCls} value={f.template} onChange={set('template')} name="template">
              <option value="">none (no root disk)</option>
              {templates.items.map((t) => (
                <option key={t.id} value={t.id} disabled={t.status?.phase !== 'ready'}>
                  {t.name} {t.status?.phase !== 'ready' ? `(${t.status?.phase || 'importing'})` : ''}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Root disk (MiB)" error={errors.rootMib}>
          {input('rootMib', { inputMode: 'numeric', name: 'root' })}
        </Field>
        <Field label="Size">
          {(id) => (
            <select
              id={id}
              className={inputCls}
              value=""
              onChange={(e) => {
                const s = SIZES[Number(e.target.value)];
                if (s) setF({ ...f, vcpus: String(s.vcpus), memoryMib: String(s.memoryMib) });
              }}
            >
              <option value="">choose a size…</option>
              {SIZES.map((s, i) => (
                <option key={s.label} value={i}>
                  {s.label}
                </option>
              ))}
            </select>
          )}
        </Field>
        <div className="grid grid-cols-2 gap-3">
          <Field label="vCPUs" error={errors.vcpus}>
            {input('vcpus', { inputMode: 'numeric', name: 'vcpus' })}
          </Field>
          <Field label="Memory (MiB)" error={errors.memoryMib}>
            {input('memoryMib', { inputMode: 'numeric', name: 'memory' })}
          </Field>
        </div>
        <fieldset className="flex flex-col gap-1">
          <legend className="text-sm font-medium">Networks</legend>
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
        <Field label="Node selector" hint="node id, node name, or k=v,k2=v2 labels">
          {input('nodeSelector')}
        </Field>
        <div />
        <Field label="SSH authorized keys (one per line)" error={errors.sshKeys}>
          {(id, d) => (
            <textarea
              id={id}
              aria-describedby={d}
              aria-invalid={!!errors.sshKeys}
              rows={3}
              className={`${inputCls} font-mono`}
              value={f.sshKeys}
              onChange={set('sshKeys')}
            />
          )}
        </Field>
        <Field label="User data (cloud-init)">
          {(id) => <textarea id={id} rows={3} className={`${inputCls} font-mono`} value={f.userData} onChange={set('userData')} placeholder="#cloud-config" />}
        </Field>
        <div className="md:col-span-2">
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
