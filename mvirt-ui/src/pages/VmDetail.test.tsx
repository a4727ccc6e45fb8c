import { afterEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { Route, Routes } from 'react-router';
import { eventStream, json, page, renderApp, stubApi, writes } from '../test/render';
import VmDetail from './VmDetail';

afterEach(() => vi.unstubAllGlobals());

const vm = {
  id: '0190-web',
  name: 'web',
  project: 'default',
  revision: 7,
  labels: {},
  spec: { vcpus: 2, memory_bytes: 512 << 20, volume_ids: [], nic_ids: [], ssh_authorized_keys: [], desired_state: 'running' },
  status: { phase: 'running', message: '', conditions: [], observed_revision: 7 },
  scheduling: { state: 'scheduled', reason: '' },
  node_id: 'n1',
  node_state: 'online',
  trace_id: 'req-7',
};

const stats = {
  id: vm.id,
  node_id: 'n1',
  sampled_at_ms: 5_000,
  running: true,
  pid: 4242,
  cpu_seconds: 3,
  memory_rss_bytes: 300 << 20,
  threads: 6,
  disk_read_bytes: 0,
  disk_write_bytes: 0,
  io_read_bytes: 0,
  io_write_bytes: 0,
  nics: [],
};

function routes(role: string) {
  return stubApi((url) => {
    if (url.startsWith('/v1/whoami')) return json({ role });
    if (url === `/v1/vms/${vm.id}/stats`) return json(stats);
    if (url.startsWith('/v1/vms')) return page([vm]);
    return undefined;
  });
}

const detail = () => (
  <Routes>
    <Route path="/vms/:id" element={<VmDetail />} />
  </Routes>
);

describe('VmDetail', () => {
  it("shows the VM's usage from its node, links to its log and trace and, to an admin, the console and actions", async () => {
    const calls = routes('admin');
    renderApp(detail(), { path: `/vms/${vm.id}` });
    await screen.findByRole('heading', { name: 'web' });
    expect(await screen.findByRole('button', { name: 'Console' })).toBeTruthy();
    for (const b of ['Start', 'Stop', 'Restart', 'Kill', 'Delete']) expect(screen.getByRole('button', { name: b })).toBeTruthy();
    await waitFor(() => expect(screen.getByTestId('usage-memory-now').textContent).toBe('300 MiB'));
    expect(screen.getByText(/hypervisor pid 4242/)).toBeTruthy();
    expect(calls.some((c) => c.url === `/v1/vms/${vm.id}/stats`)).toBe(true);
    expect(screen.getByRole('link', { name: 'n1' }).getAttribute('href')).toBe('/nodes/n1');
    expect(screen.getByRole('link', { name: 'Log entries' }).getAttribute('href')).toBe('/audit?object_id=0190-web');
    expect(screen.getByRole('link', { name: 'Trace of the last change' }).getAttribute('href')).toBe('/audit?trace_id=req-7');
  });

  it('an operator migrates the VM to a chosen node and sees where the migration is', async () => {
    const moving = {
      ...vm,
      migration: { id: 'm1', phase: 'transferring', source_node_id: 'n1', target_node_id: 'n2', bytes_transferred: 1, bytes_remaining: 2, started_at: 't' },
    };
    const node = (id: string, name: string) => ({
      id,
      name,
      project: '',
      revision: 1,
      labels: {},
      spec: { schedulable: true },
      status: { state: 'online', address: '', capacity: { vcpus: 4, memory_bytes: 1, storage_bytes: 1 }, agent_version: '' },
      allocated: { vcpus: 0, memory_bytes: 0, storage_bytes: 0 },
    });
    const calls = stubApi((url, init) => {
      if (url.startsWith('/v1/whoami')) return json({ role: 'operator' });
      if (url === `/v1/vms/${vm.id}/migrate` && init?.method === 'POST') return json(moving, 202);
      if (url === `/v1/vms/${vm.id}/stats`) return json(stats);
      if (url.startsWith('/v1/nodes')) return page([node('n1', 'alpha'), node('n2', 'beta')]);
      if (url.startsWith('/v1/vms')) return page([vm]);
      return undefined;
    });
    renderApp(detail(), { path: `/vms/${vm.id}` });
    const select = (await screen.findByRole('combobox', { name: 'Migration target' })) as HTMLSelectElement;
    await waitFor(() => expect([...select.options].map((o) => o.textContent)).toEqual(['any other node', 'beta']));
    fireEvent.change(select, { target: { value: 'n2' } });
    fireEvent.click(screen.getByRole('button', { name: 'Migrate' }));
    await waitFor(() => expect(calls.some((c) => c.url === `/v1/vms/${vm.id}/migrate` && String(c.init.body).includes('"node":"n2"'))).toBe(true));
  });

  it('a stopped VM moved cold says so', async () => {
    const moved = {
      ...vm,
      spec: { ...vm.spec, desired_state: 'stopped' },
      migration: {
        id: 'm2',
        phase: 'completed',
        cold: true,
        source_node_id: 'n2',
        target_node_id: 'n1',
        bytes_transferred: 5,
        bytes_remaining: 0,
        started_at: 't',
      },
    };
    stubApi((url) => {
      if (url.startsWith('/v1/whoami')) return json({ role: 'operator' });
      if (url === `/v1/vms/${vm.id}/stats`) return json(stats);
      if (url.startsWith('/v1/nodes')) return page([]);
      if (url.startsWith('/v1/vms')) return page([moved]);
      return undefined;
    });
    renderApp(detail(), { path: `/vms/${vm.id}` });
    await waitFor(() => expect(screen.getByTestId('migration').textContent).toBe('cold move to n1: completed'));
  });

  it('a viewer sees the VM and its usage but no console (a write channel), action or change', async () => {
    routes('viewer');
    renderApp(detail(), { path: `/vms/${vm.id}` });
    await screen.findByRole('heading', { name: 'web' });
    await waitFor(() => expect(screen.getByTestId('usage-memory-now').textContent).toBe('300 MiB'));
    await waitFor(() => {
      for (const b of ['Console', 'Start', 'Stop', 'Restart', 'Kill', 'Delete', 'Apply', 'Attach', 'Migrate'])
        expect(screen.queryByRole('button', { name: b })).toBeNull();
    });
    expect(screen.queryByRole('form', { name: 'Change vCPU and memory' })).toBeNull();
  });

  /** The admin's VM page with an event stream the test pushes to, and extra routes first. */
  function adminPage(extra: (url: string, init: RequestInit) => Response | undefined) {
    const events = eventStream();
    const calls = stubApi((url, init) => {
      const r = extra(url, init);
      if (r) return r;
      if (url.startsWith('/v1/events')) return events.response();
      if (url.startsWith('/v1/whoami')) return json({ role: 'admin' });
      if (url === `/v1/vms/${vm.id}/stats`) return json(stats);
      if (url.startsWith('/v1/vms')) return page([vm]);
      return undefined;
    });
    renderApp(detail(), { path: `/vms/${vm.id}` });
    const updated = (revision: number, object: unknown) => events.send(revision, 'vm.updated', vm.id, 'default', object);
    return { calls, updated };
  }

  it('kill and restart post their action, with no body; the phase follows the stream and a refusal shows the API message', async () => {
    const { calls, updated } = adminPage((url, init) => {
      if (url === `/v1/vms/${vm.id}/kill` && init.method === 'POST') return json({ ...vm, spec: { ...vm.spec, desired_state: 'stopped' } }, 202);
      if (url === `/v1/vms/${vm.id}/restart` && init.method === 'POST')
        return json({ error: { code: 'conflict', message: 'vm web is not running', request_id: 'req-9' } }, 409);
      return undefined;
    });
    await screen.findByRole('heading', { name: 'web' });
    fireEvent.click(await screen.findByRole('button', { name: 'Kill' }));
    await waitFor(() => expect(writes(calls)).toEqual([{ method: 'POST', url: `/v1/vms/${vm.id}/kill`, body: undefined, ifMatch: undefined }]));
    updated(8, { ...vm, revision: 8, spec: { ...vm.spec, desired_state: 'stopped' }, status: { ...vm.status, phase: 'stopped' } });
    await waitFor(() => expect(screen.getByTestId('detail-phase').textContent).toBe('stopped'));

    fireEvent.click(screen.getByRole('button', { name: 'Restart' }));
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('vm web is not running');
    expect(alert.textContent).toContain('(conflict)');
    expect(writes(calls).map((w) => `${w.method} ${w.url} ${w.body}`)).toEqual([
      `POST /v1/vms/${vm.id}/kill undefined`,
      `POST /v1/vms/${vm.id}/restart undefined`,
    ]);
  });

  it('vCPU/memory: a bad value sends nothing; a change is PUT as the whole spec with If-Match of the revision shown', async () => {
    const { calls } = adminPage((url, init) =>
      url === `/v1/vms/${vm.id}` && init.method === 'PUT' ? json({ ...vm, revision: 8, spec: { ...vm.spec, vcpus: 4, memory_bytes: 1024 << 20 } }) : undefined,
    );
    const form = await screen.findByRole('form', { name: 'Change vCPU and memory' });
    const vcpus = within(form).getByLabelText('vCPUs');
    const memory = within(form).getByLabelText('Memory (MiB)');
    expect((vcpus as HTMLInputElement).value).toBe('2');
    expect((memory as HTMLInputElement).value).toBe('512');
    await userEvent.clear(vcpus);
    await userEvent.type(vcpus, '0');
    await userEvent.click(within(form).getByRole('button', { name: 'Apply' }));
    expect(await within(form).findByText('vCPUs must be between 1 and 256')).toBeTruthy();
    expect(vcpus.getAttribute('aria-invalid')).toBe('true');
    expect(writes(calls)).toEqual([]);

    await userEvent.clear(vcpus);
    await userEvent.type(vcpus, '4');
    await userEvent.clear(memory);
    await userEvent.type(memory, '1024');
    await userEvent.click(within(form).getByRole('button', { name: 'Apply' }));
    expect(await within(form).findByText(/saved; the node applies it/)).toBeTruthy();
    expect(writes(calls)).toEqual([
      { method: 'PUT', url: `/v1/vms/${vm.id}`, body: { spec: { ...vm.spec, vcpus: 4, memory_bytes: 1024 << 20 } }, ifMatch: '"7"' },
    ]);
  });

  const volume = (id: string, name: string, extra: object = {}) => ({
    id,
    name,
    project: 'default',
    revision: 2,
    labels: {},
    spec: { size_bytes: 64 << 20 },
    status: { phase: 'ready' },
    ...extra,
  });
  const nic = (id: string, name: string, extra: object = {}) => ({
    id,
    name,
    project: 'default',
    revision: 2,
    labels: {},
    spec: { network_id: 'net', mac_address: `02:00:00:00:00:0${id.length}`, ipv4_address: `10.0.0.${id.length}` },
    ...extra,
  });

  it('disks: attach a free volume and detach an attached one, each the whole spec with If-Match; an owned disk has no Detach', async () => {
    const attachedVm = { ...vm, spec: { ...vm.spec, volume_ids: ['vol-root', 'vol-data'] } };
    const vols = [
      volume('vol-root', 'web-root', { vm_id: vm.id, owner_vm_id: vm.id }),
      volume('vol-data', 'data', { vm_id: vm.id }),
      volume('vol-free', 'spare'),
      volume('vol-other', 'theirs', { project: 'other' }),
    ];
    const calls = stubApi((url, init) => {
      if (url.startsWith('/v1/whoami')) return json({ role: 'admin' });
      if (url === `/v1/vms/${vm.id}/stats`) return json(stats);
      if (url === `/v1/vms/${vm.id}` && init.method === 'PUT') return json(attachedVm);
      if (url.startsWith('/v1/volumes')) return page(vols);
      if (url.startsWith('/v1/vms')) return page([attachedVm]);
      return undefined;
    });
    renderApp(detail(), { path: `/vms/${vm.id}` });
    const disks = await screen.findByRole('table', { name: 'Disks' });
    await within(disks).findByText('data');
    const rootRow = within(disks).getByText('web-root').closest('tr')!;
    expect(within(rootRow).queryByRole('button', { name: 'Detach' })).toBeNull();
    const select = screen.getByLabelText('Volume to attach') as HTMLSelectElement;
    // Only this project's volumes that no VM uses are offered.
    expect([...select.options].map((o) => o.value)).toEqual(['', 'vol-free']);
    const attach = within(select.closest('div')!).getByRole('button', { name: 'Attach' });
    expect(attach).toHaveProperty('disabled', true);
    fireEvent.change(select, { target: { value: 'vol-free' } });
    fireEvent.click(attach);
    await waitFor(() => expect(writes(calls)).toHaveLength(1));
    expect(select.value).toBe('');

    fireEvent.click(within(within(disks).getByText('data').closest('tr')!).getByRole('button', { name: 'Detach' }));
    await waitFor(() => expect(writes(calls)).toHaveLength(2));
    expect(writes(calls)).toEqual([
      { method: 'PUT', url: `/v1/vms/${vm.id}`, body: { spec: { ...attachedVm.spec, volume_ids: ['vol-root', 'vol-data', 'vol-free'] } }, ifMatch: '"7"' },
      { method: 'PUT', url: `/v1/vms/${vm.id}`, body: { spec: { ...attachedVm.spec, volume_ids: ['vol-root'] } }, ifMatch: '"7"' },
    ]);
  });

  it("NICs: attach a free NIC and detach one; a stale revision's refusal shows the API's message", async () => {
    const withNics = { ...vm, spec: { ...vm.spec, nic_ids: ['nic-own', 'nic-b'] } };
    const nics = [nic('nic-own', 'web-eth0', { vm_id: vm.id, owner_vm_id: vm.id }), nic('nic-b', 'extra', { vm_id: vm.id }), nic('nic-free', 'spare-nic')];
    let puts = 0;
    const calls = stubApi((url, init) => {
      if (url.startsWith('/v1/whoami')) return json({ role: 'admin' });
      if (url === `/v1/vms/${vm.id}/stats`) return json(stats);
      if (url === `/v1/vms/${vm.id}` && init.method === 'PUT')
        return ++puts === 1 ? json(withNics) : json({ error: { code: 'failed_precondition', message: 'revision 7 is stale: the VM is at revision 8' } }, 412);
      if (url.startsWith('/v1/nics')) return page(nics);
      if (url.startsWith('/v1/vms')) return page([withNics]);
      return undefined;
    });
    renderApp(detail(), { path: `/vms/${vm.id}` });
    const table = await screen.findByRole('table', { name: 'NICs' });
    await within(table).findByText('extra');
    expect(within(within(table).getByText('web-eth0').closest('tr')!).queryByRole('button', { name: 'Detach' })).toBeNull();
    const select = screen.getByLabelText('NIC to attach') as HTMLSelectElement;
    expect([...select.options].map((o) => o.value)).toEqual(['', 'nic-free']);
    fireEvent.change(select, { target: { value: 'nic-free' } });
    fireEvent.click(within(select.closest('div')!).getByRole('button', { name: 'Attach' }));
    await waitFor(() => expect(writes(calls)).toHaveLength(1));

    fireEvent.click(within(within(table).getByText('extra').closest('tr')!).getByRole('button', { name: 'Detach' }));
    expect((await screen.findByRole('alert')).textContent).toContain('revision 7 is stale: the VM is at revision 8');
    expect(writes(calls)).toEqual([
      { method: 'PUT', url: `/v1/vms/${vm.id}`, body: { spec: { ...withNics.spec, nic_ids: ['nic-own', 'nic-b', 'nic-free'] } }, ifMatch: '"7"' },
      { method: 'PUT', url: `/v1/vms/${vm.id}`, body: { spec: { ...withNics.spec, nic_ids: ['nic-own'] } }, ifMatch: '"7"' },
    ]);
  });
});
