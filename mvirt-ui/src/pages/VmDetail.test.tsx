import { afterEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, screen, waitFor } from '@testing-library/react';
import { Route, Routes } from 'react-router';
import { json, page, renderApp, stubApi } from '../test/render';
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
});
