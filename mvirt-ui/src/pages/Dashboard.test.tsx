import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor } from '@testing-library/react';
import { json, page, renderApp, stubApi } from '../test/render';
import { Dashboard } from './Dashboard';

afterEach(() => vi.unstubAllGlobals());

const node = {
  id: 'n1',
  name: 'host-a',
  revision: 2,
  labels: {},
  spec: { schedulable: true },
  status: { state: 'online', address: '10.0.0.1', agent_version: '', capacity: { vcpus: 8, memory_bytes: 8 << 30, storage_bytes: 100 << 30 } },
};
const vm = (id: string, revision: number) => ({
  id,
  name: `vm-${id}`,
  project: 'default',
  revision,
  labels: {},
  node_id: 'n1',
  spec: { vcpus: 2, memory_bytes: 1 << 30 },
  status: { phase: 'running' },
  scheduling: { state: 'scheduled' },
});

describe('Dashboard', () => {
  it('counts VMs and node use, and follows an event from the stream without re-reading anything', async () => {
    let push!: (text: string) => void;
    const events = new ReadableStream<Uint8Array>({ start: (c) => (push = (t) => c.enqueue(new TextEncoder().encode(t))) });
    const calls = stubApi((url) => {
      if (url.startsWith('/v1/events')) return new Response(events, { status: 200 });
      if (url.startsWith('/v1/controlplane'))
        return json({
          member_id: 1,
          leader_id: 1,
          term: 3,
          state: 'leader',
          applied_index: 9,
          members: [{ id: 1, api_url: 'http://a:8080', raft_addr: 'a:6001', role: 'leader' }],
        });
      if (url.startsWith('/v1/nodes')) return page([node]);
      if (url.startsWith('/v1/vms')) return page([vm('01', 3)]);
      return undefined;
    });
    renderApp(<Dashboard />);
    await waitFor(() => expect(screen.getByTestId('vm-count').textContent).toBe('1'));
    expect(screen.getByTestId('leader').textContent).toContain('member 1');
    expect(screen.getByRole('meter', { name: 'vCPU' }).getAttribute('aria-valuenow')).toBe('25');

    const listReads = calls.filter((c) => c.url.startsWith('/v1/vms')).length;
    const created = { revision: 10, type: 'vm.created', kind: 'vm', id: '02', project: 'default', object: vm('02', 10) };
    push(`id: 10\nevent: vm.created\ndata: ${JSON.stringify(created)}\n\n`);
    await waitFor(() => expect(screen.getByTestId('vm-count').textContent).toBe('2'));
    expect(screen.getByRole('meter', { name: 'vCPU' }).getAttribute('aria-valuenow')).toBe('50');
    expect(screen.getByText('vm.created')).toBeTruthy();
    expect(calls.filter((c) => c.url.startsWith('/v1/vms')).length).toBe(listReads);
  });
});
