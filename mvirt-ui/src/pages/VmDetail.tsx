// One VM: status, conditions and placement (live), power actions, its usage over the last
// minutes, changes to vCPU/memory, disks and NICs (sent as the full spec with If-Match), and the
// serial console, and live migration to another node (operators and admins).
import { lazy, Suspense, useState, type FormEvent } from 'react';
import { useMutation, useQuery } from '@tanstack/react-query';
import { Link, useNavigate, useParams } from 'react-router';
import { api, del, post, put } from '../api/client';
import type { Nic, Node, Vm, Volume } from '../api/types';
import { useCan } from '../auth';
import { Badge, Button, Card, ConfirmButton, ErrorBox, Field, inputCls, PageHeader, Table } from '../components/ui';
import { ago, bytes, MIB, validateInt } from '../format';
import { LogLinks } from '../components/LogLinks';
import { useList } from '../live';
import { GuestUsage } from '../usage/Usage';
import { vmPhase } from './Vms';

const Console = lazy(() => import('../console/Console'));

export default function VmDetail() {
  const { id = '' } = useParams();
  const vms = useList<Vm>('vm');
  const nodes = useList<Node>('node');
  const listed = vms.items.find((v) => v.id === id || v.name === id);
  // Right after a create the list may not have the VM's event yet: read it directly meanwhile.
  const direct = useQuery({
    queryKey: ['vm', id],
    queryFn: () => api<Vm>(`/v1/vms/${encodeURIComponent(id)}`),
    enabled: !listed && !vms.isLoading,
    retry: false,
  });
  const vm = listed ?? (direct.data && !direct.isError ? direct.data : undefined);
  const [showConsole, setShowConsole] = useState(false);
  if (vms.isLoading || (!vm && direct.isLoading)) return <p className="text-sm text-muted">Loading…</p>;
  if (!vm)
    return (
      <div>
        <PageHeader title="VM not found" />
        <p className="text-sm">
          There is no VM {id} (it may have been deleted).{' '}
          <Link to="/vms" className="underline">
            All VMs
          </Link>
        </p>
      </div>
    );
  const node = nodes.items.find((n) => n.id === vm.node_id);
  return (
    <div className="flex flex-col gap-4">
      <PageHeader title={vm.name}>
        <span className="font-mono">{vm.id}</span> · project {vm.project} · <LogLinks object={vm} />
      </PageHeader>
      <Actions vm={vm} onConsole={() => setShowConsole((s) => !s)} consoleOpen={showConsole} />
      {showConsole && (
        <Card title="Serial console">
          <Suspense fallback={<p className="text-sm text-muted">Loading the terminal…</p>}>
            <Console vmId={vm.id} />
          </Suspense>
        </Card>
      )}
      <div className="grid gap-4 lg:grid-cols-2">
        <Card title="Status">
          <dl className="grid grid-cols-[10rem_1fr] gap-1 text-sm">
            <dt className="text-muted">Phase</dt>
            <dd data-testid="detail-phase">
              <Badge value={vmPhase(vm)} />
            </dd>
            <dt className="text-muted">Message</dt>
            <dd>{vm.status?.message || '—'}</dd>
            <dt className="text-muted">Desired state</dt>
            <dd>{vm.spec.desired_state}</dd>
            <dt className="text-muted">Scheduling</dt>
            <dd>
              {vm.scheduling?.state}
              {vm.scheduling?.reason ? `: ${vm.scheduling.reason}` : ''}
            </dd>
            <dt className="text-muted">Node</dt>
            <dd>
              {vm.node_id ? (
                <Link className="underline" to={`/nodes/${vm.node_id}`}>
                  {node ? node.name : vm.node_id}
                </Link>
              ) : (
                '—'
              )}{' '}
              {vm.node_state && <Badge value={vm.node_state} />}
            </dd>
            <dt className="text-muted">Updated</dt>
            <dd>{ago(vm.status?.updated_at)}</dd>
            <dt className="text-muted">Revision</dt>
            <dd>{vm.revision}</dd>
          </dl>
          <h3 className="mt-3 mb-1 text-sm font-semibold">Conditions</h3>
          {vm.status?.conditions?.length ? (
            <ul className="text-sm">
              {vm.status.conditions.map((c, i) => (
                <li key={i}>
                  <span className="font-medium">{c.type}</span> = {c.status} {c.message && <span className="text-muted">— {c.message}</span>}
                </li>
              ))}
            </ul>
          ) : (
            <p className="text-sm text-muted">none reported</p>
          )}
        </Card>
        <Resize vm={vm} />
      </div>
      <GuestUsage key={vm.id} kind="vm" id={vm.id} placed={!!vm.node_id} />
      <Attachments vm={vm} />
    </div>
  );
}

function Actions({ vm, onConsole, consoleOpen }: { vm: Vm; onConsole: () => void; consoleOpen: boolean }) {
  const canAct = useCan('vm-action');
  const canWrite = useCan('write');
  const navigate = useNavigate();
  const action = useMutation({ mutationFn: (verb: string) => post(`/v1/vms/${vm.id}/${verb}`) });
  const remove = useMutation({ mutationFn: () => del(`/v1/vms/${vm.id}`), onSuccess: () => navigate('/vms') });
  if (!canAct && !canWrite) return null;
  return (
    <div className="flex flex-col gap-2">
      <div className="flex flex-wrap gap-2">
        {canAct && (
          <>
            {/* The console is a write channel (keystrokes reach the guest): operators and admins. */}
            <Button variant="primary" onClick={onConsole} disabled={!vm.node_id}>
              {consoleOpen ? 'Close console' : 'Console'}
            </Button>
            <Button onClick={() => action.mutate('start')} disabled={action.isPending}>
              Start
            </Button>
            <Button onClick={() => action.mutate('stop')} disabled={action.isPending}>
              Stop
            </Button>
            <Button onClick={() => action.mutate('restart')} disabled={action.isPending}>
              Restart
            </Button>
            <Button onClick={() => action.mutate('kill')} disabled={action.isPending}>
              Kill
            </Button>
          </>
        )}
        {canWrite && <ConfirmButton label="Delete" confirm={`Delete ${vm.name} and its owned disks and NICs?`} onConfirm={() => remove.mutate()} />}
      </div>
      <ErrorBox error={action.error ?? remove.error} onClose={() => (action.reset(), remove.reset())} />
      {canAct && <Migrate vm={vm} />}
    </div>
  );
}

/** Migration: the target node (or the scheduler's choice), and where the last one is. A running
 *  VM migrates live, a stopped one moves cold (its volumes copied; `migration.cold`). */
function Migrate({ vm }: { vm: Vm }) {
  const nodes = useList<Node>('node');
  const [target, setTarget] = useState('');
  const migrate = useMutation({
    mutationFn: () => post(`/v1/vms/${vm.id}/migrate`, target ? { node: target } : {}),
  });
  const others = nodes.items.filter((n) => n.id !== vm.node_id && n.status.state === 'online' && n.spec.schedulable);
  const m = vm.migration;
  const nameOf = (id: string) => nodes.items.find((n) => n.id === id)?.name ?? id;
  const active = !!m && ['pending', 'transferring', 'completing'].includes(m.phase);
  return (
    <div className="flex flex-wrap items-center gap-2">
      <select aria-label="Migration target" className={inputCls} value={target} onChange={(e) => setTarget(e.target.value)}>
        <option value="">any other node</option>
        {others.map((n) => (
          <option key={n.id} value={n.id}>
            {n.name}
          </option>
        ))}
      </select>
      <Button onClick={() => migrate.mutate()} disabled={migrate.isPending || active || !vm.node_id || others.length === 0}>
        Migrate
      </Button>
      {m && (
        <span className="text-sm text-muted" data-testid="migration">
          {m.cold ? 'cold move' : 'migration'} to {nameOf(m.target_node_id)}: {m.phase}
          {m.phase === 'completed' && m.downtime_ms != null && ` (downtime ${m.downtime_ms} ms)`}
          {m.error && ` — ${m.error}`}
        </span>
      )}
      <ErrorBox error={migrate.error} onClose={() => migrate.reset()} />
    </div>
  );
}

function Resize({ vm }: { vm: Vm }) {
  const can = useCan('write');
  const [vcpus, setVcpus] = useState(String(vm.spec.vcpus));
  const [mem, setMem] = useState(String(Math.round(vm.spec.memory_bytes / MIB)));
  const [errors, setErrors] = useState<{ vcpus?: string; mem?: string }>({});
  const save = useMutation({
    mutationFn: () => put(`/v1/vms/${vm.id}`, { spec: { ...vm.spec, vcpus: Number(vcpus), memory_bytes: Number(mem) * MIB } }, vm.revision),
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const errs = { vcpus: validateInt(vcpus, 1, 256, 'vCPUs'), mem: validateInt(mem, 16, 4 * 1024 * 1024, 'memory (MiB)') };
    setErrors(errs);
    if (!errs.vcpus && !errs.mem) save.mutate();
  };
  return (
    <Card title="Resources">
      <p className="mb-2 text-sm">
        {vm.spec.vcpus} vCPU · {bytes(vm.spec.memory_bytes)} {vm.spec.hostname && <>· hostname {vm.spec.hostname}</>}
      </p>
      {can && (
        <form onSubmit={submit} className="flex flex-wrap items-end gap-3" noValidate aria-label="Change vCPU and memory">
          <Field label="vCPUs" error={errors.vcpus}>
            {(id, d) => (
              <input
                id={id}
                aria-describedby={d}
                aria-invalid={!!errors.vcpus}
                className={`${inputCls} w-24`}
                value={vcpus}
                onChange={(e) => setVcpus(e.target.value)}
              />
            )}
          </Field>
          <Field label="Memory (MiB)" error={errors.mem}>
            {(id, d) => (
              <input
                id={id}
                aria-describedby={d}
                aria-invalid={!!errors.mem}
                className={`${inputCls} w-32`}
                value={mem}
                onChange={(e) => setMem(e.target.value)}
              />
            )}
          </Field>
          <Button type="submit" disabled={save.isPending}>
            Apply
          </Button>
          {save.isSuccess && <span className="text-sm text-muted">saved; the node applies it (a running VM may need a restart)</span>}
        </form>
      )}
      <ErrorBox error={save.error} />
    </Card>
  );
}

function Attachments({ vm }: { vm: Vm }) {
  const can = useCan('write');
  const volumes = useList<Volume>('volume').items;
  const nics = useList<Nic>('nic').items;
  const [addVol, setAddVol] = useState('');
  const [addNic, setAddNic] = useState('');
  const update = useMutation({ mutationFn: (spec: Vm['spec']) => put(`/v1/vms/${vm.id}`, { spec }, vm.revision) });
  const volumeIds = vm.spec.volume_ids ?? [];
  const nicIds = vm.spec.nic_ids ?? [];
  const attachedVols = volumeIds.map((id) => volumes.find((v) => v.id === id) ?? ({ id, name: id } as Volume));
  const attachedNics = nicIds.map((id) => nics.find((n) => n.id === id) ?? ({ id, name: id } as Nic));
  const freeVols = volumes.filter((v) => v.project === vm.project && !v.vm_id && !volumeIds.includes(v.id));
  const freeNics = nics.filter((n) => n.project === vm.project && !n.vm_id && !nicIds.includes(n.id));
  return (
    <div className="grid gap-4 lg:grid-cols-2">
      <Card title="Disks">
        <Table label="Disks" head={['Volume', 'Size', 'Owned', '']}>
          {attachedVols.map((v) => (
            <tr key={v.id}>
              <td className="px-3 py-2">{v.name}</td>
              <td className="px-3 py-2">{bytes(v.spec?.size_bytes)}</td>
              <td className="px-3 py-2">{v.owner_vm_id === vm.id ? 'yes' : 'no'}</td>
              <td className="px-3 py-2 text-right">
                {can && v.owner_vm_id !== vm.id && (
                  <Button onClick={() => update.mutate({ ...vm.spec, volume_ids: volumeIds.filter((x) => x !== v.id) })}>Detach</Button>
                )}
              </td>
            </tr>
          ))}
        </Table>
        {can && (
          <div className="mt-2 flex items-center gap-2">
            <label className="text-sm">
              <span className="sr-only">Volume to attach</span>
              <select className={inputCls} value={addVol} onChange={(e) => setAddVol(e.target.value)}>
                <option value="">attach a volume…</option>
                {freeVols.map((v) => (
                  <option key={v.id} value={v.id}>
                    {v.name} ({bytes(v.spec.size_bytes)})
                  </option>
                ))}
              </select>
            </label>
            <Button disabled={!addVol} onClick={() => (update.mutate({ ...vm.spec, volume_ids: [...volumeIds, addVol] }), setAddVol(''))}>
              Attach
            </Button>
          </div>
        )}
      </Card>
      <Card title="Network interfaces">
        <Table label="NICs" head={['NIC', 'MAC', 'IPv4', 'Owned', '']}>
          {attachedNics.map((n) => (
            <tr key={n.id}>
              <td className="px-3 py-2">{n.name}</td>
              <td className="px-3 py-2 font-mono text-xs">{n.spec?.mac_address ?? '—'}</td>
              <td className="px-3 py-2 font-mono text-xs">{n.spec?.ipv4_address ?? '—'}</td>
              <td className="px-3 py-2">{n.owner_vm_id === vm.id ? 'yes' : 'no'}</td>
              <td className="px-3 py-2 text-right">
                {can && n.owner_vm_id !== vm.id && (
                  <Button onClick={() => update.mutate({ ...vm.spec, nic_ids: nicIds.filter((x) => x !== n.id) })}>Detach</Button>
                )}
              </td>
            </tr>
          ))}
        </Table>
        {can && (
          <div className="mt-2 flex items-center gap-2">
            <label className="text-sm">
              <span className="sr-only">NIC to attach</span>
              <select className={inputCls} value={addNic} onChange={(e) => setAddNic(e.target.value)}>
                <option value="">attach a NIC…</option>
                {freeNics.map((n) => (
                  <option key={n.id} value={n.id}>
                    {n.name} ({n.spec.ipv4_address ?? n.spec.mac_address})
                  </option>
                ))}
              </select>
            </label>
            <Button disabled={!addNic} onClick={() => (update.mutate({ ...vm.spec, nic_ids: [...nicIds, addNic] }), setAddNic(''))}>
              Attach
            </Button>
          </div>
        )}
      </Card>
      <div className="lg:col-span-2">
        <ErrorBox error={update.error} onClose={() => update.reset()} />
      </div>
    </div>
  );
}
