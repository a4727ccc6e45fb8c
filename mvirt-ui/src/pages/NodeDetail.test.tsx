import { afterEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, screen, waitFor } from '@testing-library/react';
import { Route, Routes } from 'react-router';
import { json, page, renderApp, stubApi } from '../test/render';
import NodeDetail from './NodeDetail';

afterEach(() => vi.unstubAllGlobals());

const node = (drain?: unknown) => ({
  id: 'n1',
  name: 'alpha',
  project: '',
  revision: 3,
  labels: {},
  spec: { schedulable: drain === undefined },
  status: {
    state: 'online',
    address: '',
    capacity: { vcpus: 4, memory_bytes: 1 << 30, storage_bytes: 1 << 30 },
    agent_version: '',
    ...(drain ? { drain } : {}),
  },
  allocated: { vcpus: 0, memory_bytes: 0, storage_bytes: 0 },
});

const vm = {
  id: 'vm-1',
  name: 'web',
  project: 'default',
  revision: 1,
  labels: {},
  spec: { vcpus: 1, memory_bytes: 1 << 20, volume_ids: [], nic_ids: [], ssh_authorized_keys: [], desired_state: 'running' },
  status: { phase: 'running' },
  node_id: 'n2',
};

const detail = () => (
  <Routes>
    <Route path="/nodes/:id" element={<NodeDetail />} />
  </Routes>
);

function routes(role: string, n: unknown) {
  return stubApi((url, init) => {
    if (url.startsWith('/v1/whoami')) return json({ role });
    if (url === '/v1/nodes/n1/drain' && init?.method === 'POST')
      return json(node({ id: 'd', state: 'draining', started_at: 't', remaining: [], migrating: ['vm-1'], moved: [], failed: [] }), 202);
    if (url.startsWith('/v1/nodes/n1/stats')) return json({ error: { code: 'conflict', message: 'no stats' } }, 409);
    if (url.startsWith('/v1/nodes')) return page([n]);
    if (url.startsWith('/v1/vms')) return page([vm]);
    return undefined;
  });
}

describe('NodeDetail drain', () => {
  it('an admin drains the node after confirming', async () => {
    const calls = routes('admin', node());
    renderApp(detail(), { path: '/nodes/n1' });
    await screen.findByRole('heading', { name: 'alpha' });
    fireEvent.click(await screen.findByRole('button', { name: 'Drain' }));
    expect(screen.getByText(/Cordon alpha and migrate its running VMs/)).toBeTruthy();
    expect(calls.some((c) => c.url === '/v1/nodes/n1/drain')).toBe(false);
    fireEvent.click(screen.getByRole('button', { name: 'Yes, drain' }));
    await waitFor(() => expect(calls.some((c) => c.url === '/v1/nodes/n1/drain' && c.init.method === 'POST' && c.init.body === '{}')).toBe(true));
  });

  it("an operator sees the drain but can neither drain nor cordon (every project's VMs move)", async () => {
    routes('operator', node());
    renderApp(detail(), { path: '/nodes/n1' });
    await screen.findByRole('heading', { name: 'alpha' });
    for (const b of ['Drain', 'Cordon']) expect(screen.queryByRole('button', { name: b })).toBeNull();
  });

  it("shows a failed drain's moved VMs and what could not move, and undrains it", async () => {
    const failed = {
      id: 'd',
      state: 'failed',
      started_at: 't',
      finished_at: 't2',
      remaining: [],
      migrating: [],
      moved: ['vm-1'],
      moved_pods: ['p2'],
      failed: [{ kind: 'pod', id: 'p1', reason: 'no node can take the pod: node b is cordoned' }],
    };
    const calls = routes('admin', node(failed));
    renderApp(detail(), { path: '/nodes/n1' });
    const card = await screen.findByTestId('node-drain');
    expect(card.textContent).toContain('failed');
    expect(screen.getByRole('link', { name: 'web' }).getAttribute('href')).toBe('/vms/vm-1');
    expect(screen.getByRole('link', { name: 'p2' }).getAttribute('href')).toBe('/pods/p2');
    expect(card.textContent).toContain('pod p1: no node can take the pod: node b is cordoned');
    fireEvent.click(screen.getByRole('button', { name: 'Undrain' }));
    await waitFor(() => expect(calls.some((c) => c.url === '/v1/nodes/n1/drain' && c.init.method === 'DELETE')).toBe(true));
  });

  it('a viewer sees the drain but cannot drain', async () => {
    routes('viewer', node({ id: 'd', state: 'draining', started_at: 't', remaining: ['vm-1'], migrating: [], moved: [], failed: [] }));
    renderApp(detail(), { path: '/nodes/n1' });
    const card = await screen.findByTestId('node-drain');
    expect(card.textContent).toContain('draining');
    expect(screen.getByText('cordoned (draining)')).toBeTruthy();
    for (const b of ['Drain', 'Cancel drain', 'Cordon', 'Uncordon']) expect(screen.queryByRole('button', { name: b })).toBeNull();
  });
});

describe('NodeDetail status', () => {
  it("shows the pod artefacts version the node's agent reported, or that it has none", async () => {
    const withArtefacts = { ...node(), status: { ...node().status, pod_artefacts_version: '0.1.0+ab12cd' } };
    routes('viewer', withArtefacts);
    const { unmount } = renderApp(detail(), { path: '/nodes/n1' });
    expect((await screen.findByTestId('node-detail-pod-artefacts')).textContent).toBe('0.1.0+ab12cd');
    unmount();
    routes('viewer', node());
    renderApp(detail(), { path: '/nodes/n1' });
    expect((await screen.findByTestId('node-detail-pod-artefacts')).textContent).toContain('none');
  });
});
