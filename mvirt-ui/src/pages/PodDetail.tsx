// One pod: status and placement (live), its containers' states (exit codes, restarts, OOM),
// start/stop/restart/delete, its usage over the last minutes (its microVM's), the log (per container, following), and a command in a container
// (xterm.js over the exec WebSocket).
import { lazy, Suspense, useState, type FormEvent } from 'react';
import { useMutation, useQuery } from '@tanstack/react-query';
import { Link, useNavigate, useParams } from 'react-router';
import { api, del, post } from '../api/client';
import type { Node, Pod } from '../api/types';
import { useCan } from '../auth';
import { Badge, Button, Card, ConfirmButton, ErrorBox, Field, inputCls, PageHeader, Table } from '../components/ui';
import { ago, bytes } from '../format';
import { LogLinks } from '../components/LogLinks';
import { useList } from '../live';
import { splitArgs } from '../pods/frames';
import { PodLogs } from '../pods/Logs';
import { GuestUsage } from '../usage/Usage';
import { podPhase } from './Pods';

const ExecTerminal = lazy(() => import('../pods/Exec'));

export default function PodDetail() {
  const { id = '' } = useParams();
  const pods = useList<Pod>('pod');
  const nodes = useList<Node>('node');
  const listed = pods.items.find((p) => p.id === id || p.name === id);
  // Right after a create the list may not have the pod's event yet: read it directly meanwhile.
  const direct = useQuery({
    queryKey: ['pod', id],
    queryFn: () => api<Pod>(`/v1/pods/${encodeURIComponent(id)}`),
    enabled: !listed && !pods.isLoading,
    retry: false,
  });
  const pod = listed ?? (direct.data && !direct.isError ? direct.data : undefined);
  if (pods.isLoading || (!pod && direct.isLoading)) return <p className="text-sm text-muted">Loading…</p>;
  if (!pod)
    return (
      <div>
        <PageHeader title="Pod not found" />
        <ErrorBox error={pods.error} />
        <p className="text-sm">
          There is no pod {id} (it may have been deleted).{' '}
          <Link to="/pods" className="underline">
            All pods
          </Link>
        </p>
      </div>
    );
  const node = nodes.items.find((n) => n.id === pod.node_id);
  const addresses = [...(pod.status?.ipv4_addresses ?? []), ...(pod.status?.ipv6_addresses ?? [])];
  return (
    <div className="flex flex-col gap-4">
      <PageHeader title={pod.name}>
        <span className="font-mono">{pod.id}</span> · project {pod.project} · <LogLinks object={pod} />
      </PageHeader>
      <Actions pod={pod} />
      <div className="grid gap-4 lg:grid-cols-2">
        <Card title="Status">
          <dl className="grid grid-cols-[10rem_1fr] gap-1 text-sm">
            <dt className="text-muted">Phase</dt>
            <dd data-testid="pod-detail-phase">
              <Badge value={podPhase(pod)} />
            </dd>
            <dt className="text-muted">Message</dt>
            <dd>{pod.status?.message || '—'}</dd>
            <dt className="text-muted">Desired state</dt>
            <dd>{pod.spec.desired_state ?? 'running'}</dd>
            <dt className="text-muted">Scheduling</dt>
            <dd data-testid="pod-scheduling">
              {pod.scheduling?.state ?? '—'}
              {pod.scheduling?.reason ? `: ${pod.scheduling.reason}` : ''}
            </dd>
            <dt className="text-muted">Node</dt>
            <dd>
              {pod.node_id ? (
                <Link className="underline" to={`/nodes/${pod.node_id}`}>
                  {node ? node.name : pod.node_id}
                </Link>
              ) : (
                '—'
              )}{' '}
              {pod.node_state && <Badge value={pod.node_state} />}
            </dd>
            <dt className="text-muted">Addresses</dt>
            <dd className="font-mono text-xs">{addresses.length ? addresses.join(', ') : '—'}</dd>
            <dt className="text-muted">Updated</dt>
            <dd>{ago(pod.status?.updated_at ?? pod.updated_at)}</dd>
            <dt className="text-muted">Revision</dt>
            <dd>
              {pod.revision}
              {pod.restart_generation ? ` · restart generation ${pod.restart_generation}` : ''}
            </dd>
            {pod.status?.artefacts_version && (
              <>
                <dt className="text-muted">Pod artefacts</dt>
                <dd className="font-mono text-xs">{pod.status.artefacts_version}</dd>
              </>
            )}
          </dl>
          <h3 className="mt-3 mb-1 text-sm font-semibold">Conditions</h3>
          {pod.status?.conditions?.length ? (
            <ul className="text-sm">
              {pod.status.conditions.map((c, i) => (
                <li key={i}>
                  <span className="font-medium">{c.type}</span> = {c.status} {c.message && <span className="text-muted">— {c.message}</span>}
                </li>
              ))}
            </ul>
          ) : (
            <p className="text-sm text-muted">none reported</p>
          )}
        </Card>
        <Card title="Spec">
          <dl className="grid grid-cols-[10rem_1fr] gap-1 text-sm">
            <dt className="text-muted">Size</dt>
            <dd>
              {pod.spec.vcpus} vCPU · {bytes(pod.spec.memory_bytes)}
            </dd>
            <dt className="text-muted">Hostname</dt>
            <dd>{pod.spec.hostname || pod.name}</dd>
            <dt className="text-muted">Node selector</dt>
            <dd>{pod.spec.node_selector || '—'}</dd>
            <dt className="text-muted">NICs</dt>
            <dd className="font-mono text-xs">{pod.spec.nic_ids?.length ? pod.spec.nic_ids.map((n) => n.slice(-8)).join(', ') : '—'}</dd>
            <dt className="text-muted">Registry credentials</dt>
            <dd>
              {pod.spec.registry_credentials?.length
                ? pod.spec.registry_credentials.map((r) => `${r.registry}${r.username ? ` (${r.username})` : ' (token)'}`).join(', ')
                : '—'}
            </dd>
            <dt className="text-muted">Labels</dt>
            <dd>
              {Object.entries(pod.labels ?? {})
                .map(([k, v]) => `${k}=${v}`)
                .join(', ') || '—'}
            </dd>
          </dl>
        </Card>
      </div>
      <Card title="Containers">
        <Containers pod={pod} />
      </Card>
      <GuestUsage key={pod.id} kind="pod" id={pod.id} placed={!!pod.node_id} />
      <Card title="Logs">
        <PodLogs pod={pod} />
      </Card>
      <Exec pod={pod} />
    </div>
  );
}

function Containers({ pod }: { pod: Pod }) {
  const statuses = new Map((pod.status?.containers ?? []).map((c) => [c.name, c]));
  return (
    <Table label="Containers" head={['Name', 'Image', 'State', 'Exit code', 'Restarts', 'OOM killed', 'Started', 'Finished', 'Limits', 'Message']}>
      {pod.spec.containers.map((spec) => {
        const c = statuses.get(spec.name);
        return (
          <tr key={spec.name} data-testid="container-row" data-name={spec.name}>
            <td className="px-3 py-2 font-medium">{spec.name}</td>
            <td className="px-3 py-2 font-mono text-xs break-all">
              {spec.image}
              {c?.image_digest && <div className="text-muted">{c.image_digest.slice(0, 19)}…</div>}
            </td>
            <td className="px-3 py-2" data-testid="container-state">
              <Badge value={c?.state ?? 'not reported'} />
            </td>
            <td className="px-3 py-2">{c?.exit_code ?? '—'}</td>
            <td className="px-3 py-2">{c?.restart_count ?? 0}</td>
            <td className="px-3 py-2">{c?.oom_killed ? <Badge value="OOM killed" /> : 'no'}</td>
            <td className="px-3 py-2">{ago(c?.started_at)}</td>
            <td className="px-3 py-2">{ago(c?.finished_at)}</td>
            <td className="px-3 py-2 text-xs">
              {spec.cpu_millis ? `${spec.cpu_millis}m CPU` : ''}
              {spec.cpu_millis && spec.memory_bytes ? ' · ' : ''}
              {spec.memory_bytes ? bytes(spec.memory_bytes) : ''}
              {!spec.cpu_millis && !spec.memory_bytes ? '—' : ''}
              <div className="text-muted">restart {spec.restart_policy ?? 'always'}</div>
            </td>
            <td className="px-3 py-2 text-xs">{c?.message || '—'}</td>
          </tr>
        );
      })}
    </Table>
  );
}

function Actions({ pod }: { pod: Pod }) {
  const canAct = useCan('vm-action');
  const canWrite = useCan('write');
  const navigate = useNavigate();
  const action = useMutation({
    mutationFn: (verb: string) => (verb === 'force-stop' ? post(`/v1/pods/${pod.id}/stop`, undefined, { force: true }) : post(`/v1/pods/${pod.id}/${verb}`)),
  });
  const remove = useMutation({ mutationFn: () => del(`/v1/pods/${pod.id}`), onSuccess: () => navigate('/pods') });
  if (!canAct && !canWrite) return null;
  return (
    <div className="flex flex-col gap-2">
      <div className="flex flex-wrap gap-2">
        {canAct && (
          <>
            <Button onClick={() => action.mutate('start')} disabled={action.isPending}>
              Start
            </Button>
            <Button onClick={() => action.mutate('stop')} disabled={action.isPending}>
              Stop
            </Button>
            <Button onClick={() => action.mutate('restart')} disabled={action.isPending}>
              Restart
            </Button>
            <Button onClick={() => action.mutate('force-stop')} disabled={action.isPending} title="stop at once, without waiting for the containers to exit">
              Force stop
            </Button>
          </>
        )}
        {canWrite && <ConfirmButton label="Delete" confirm={`Delete ${pod.name} and its owned NICs?`} onConfirm={() => remove.mutate()} />}
      </div>
      <ErrorBox error={action.error ?? remove.error} onClose={() => (action.reset(), remove.reset())} />
    </div>
  );
}

interface Session {
  run: number;
  container: string;
  command: string[];
  tty: boolean;
}

/** The exec form and, once run, the terminal. Exec is a write (like the VM console): viewers
 *  do not see it. */
function Exec({ pod }: { pod: Pod }) {
  const can = useCan('write');
  const names = pod.spec.containers.map((c) => c.name);
  const [container, setContainer] = useState(names[0] ?? '');
  const [command, setCommand] = useState('sh');
  const [tty, setTty] = useState(true);
  const [error, setError] = useState<string>();
  const [session, setSession] = useState<Session | null>(null);
  if (!can) return null;
  const submit = (e: FormEvent) => {
    e.preventDefault();
    let argv: string[];
    try {
      argv = splitArgs(command);
    } catch (err) {
      setError(`${(err as Error).message} (quote with ' or ")`);
      return;
    }
    if (argv.length === 0) {
      setError('a command is required (e.g. sh)');
      return;
    }
    setError(undefined);
    setSession({ run: (session?.run ?? 0) + 1, container, command: argv, tty });
  };
  return (
    <Card title="Run a command">
      <form onSubmit={submit} className="mb-3 flex flex-wrap items-end gap-3" aria-label="Run a command" noValidate>
        <Field label="Container">
          {(id) => (
            <select id={id} className={inputCls} value={container} onChange={(e) => setContainer(e.target.value)}>
              {names.map((n) => (
                <option key={n} value={n}>
                  {n}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Command" error={error}>
          {(id, d) => (
            <input
              id={id}
              aria-describedby={d}
              aria-invalid={!!error}
              className={`${inputCls} w-72 font-mono`}
              value={command}
              onChange={(e) => setCommand(e.target.value)}
            />
          )}
        </Field>
        <label className="flex items-center gap-1 pb-2 text-sm">
          <input type="checkbox" checked={tty} onChange={(e) => setTty(e.target.checked)} /> Terminal (tty)
        </label>
        <Button type="submit" variant="primary">
          {session ? 'Run again' : 'Run'}
        </Button>
        {session && <Button onClick={() => setSession(null)}>Close</Button>}
      </form>
      {session && (
        <Suspense fallback={<p className="text-sm text-muted">Loading the terminal…</p>}>
          <ExecTerminal key={session.run} podId={pod.id} container={session.container} command={session.command} tty={session.tty} />
        </Suspense>
      )}
    </Card>
  );
}
