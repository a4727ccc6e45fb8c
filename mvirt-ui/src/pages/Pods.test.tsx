import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { Route, Routes } from 'react-router';
import { json, page, renderApp, stubApi } from '../test/render';
import Pods from './Pods';
import PodDetail from './PodDetail';

afterEach(() => vi.unstubAllGlobals());

// jsdom lays nothing out: give the log box (a windowed list inside its own scroll box) the
// height it has in a browser, so its virtualizer shows rows.
beforeAll(() =>
  Object.defineProperty(HTMLElement.prototype, 'clientHeight', {
    configurable: true,
    get(this: HTMLElement) {
      return this.getAttribute('role') === 'log' ? 320 : 0;
    },
  }),
);
afterAll(() => delete (HTMLElement.prototype as { clientHeight?: number }).clientHeight);

const pod = (name: string, over: Record<string, unknown> = {}) => ({
  id: `0190-${name}`,
  name,
  project: 'default',
  revision: 4,
  labels: {},
  spec: {
    vcpus: 1,
    memory_bytes: 512 << 20,
    containers: [
      { name: 'web', image: 'reg:5000/httpd:1', restart_policy: 'always', memory_bytes: 128 << 20 },
      { name: 'db', image: 'reg:5000/db:2', restart_policy: 'on_failure' },
    ],
    nic_ids: [],
    desired_state: 'running',
    registry_credentials: [{ registry: 'reg:5000', username: 'puller' }],
  },
  status: null,
  node_id: null,
  scheduling: { state: 'pending', reason: 'no node matches the node selector "zone=nowhere"' },
  ...over,
});

const running = pod('api', {
  node_id: 'node-1',
  status: {
    phase: 'running',
    message: '',
    conditions: [],
    ipv4_addresses: ['10.0.0.5'],
    containers: [
      { name: 'web', image: 'reg:5000/httpd:1', state: 'running', restart_count: 2, exit_code: null, oom_killed: false },
      { name: 'db', image: 'reg:5000/db:2', state: 'exited', restart_count: 5, exit_code: 137, oom_killed: true, message: 'OOMKilled' },
    ],
  },
  scheduling: { state: 'scheduled', reason: '' },
});

function ndjson(lines: object[]) {
  return new Response(lines.map((l) => JSON.stringify(l)).join('\n') + '\n', { status: 200, headers: { 'Content-Type': 'application/x-ndjson' } });
}

describe('Pods list', () => {
  it('lists pods newest first with phase, containers and restarts', async () => {
    stubApi((url) => (url.startsWith('/v1/pods') ? page([pod('alpha'), running]) : undefined));
    renderApp(<Pods />);
    const rows = await screen.findAllByTestId('pod-row');
    // Newest (highest UUIDv7) first: 0190-api > 0190-alpha.
    expect(rows.map((r) => r.dataset.name)).toEqual(['api', 'alpha']);
    expect(within(rows[1]).getByText('pending')).toBeTruthy();
    expect(within(rows[1]).getByText('0/2 running')).toBeTruthy();
    expect(within(rows[0]).getByText('1/2 running')).toBeTruthy();
    expect(within(rows[0]).getByText('7')).toBeTruthy();
  });

  it('checks the form first, sends the secrets once, and shows the API message when it refuses', async () => {
    const calls = stubApi((url, init) =>
      url === '/v1/pods' && init.method === 'POST'
        ? json({ error: { code: 'invalid_argument', message: 'containers[0].image: unknown registry' } }, 400)
        : undefined,
    );
    renderApp(<Pods />);
    await userEvent.click(await screen.findByRole('button', { name: 'Create pod' }));
    const dialog = await screen.findByRole('form', { name: 'Create pod' });
    await userEvent.type(within(dialog).getByLabelText('Name'), 'Bad Name');
    await userEvent.click(within(dialog).getByRole('button', { name: 'Create' }));
    expect(await within(dialog).findByText(/lowercase letters/)).toBeTruthy();
    expect(within(dialog).getByText(/an image is required/)).toBeTruthy();
    expect(calls.some((c) => c.init.method === 'POST')).toBe(false);

    await userEvent.clear(within(dialog).getByLabelText('Name'));
    await userEvent.type(within(dialog).getByLabelText('Name'), 'web');
    await userEvent.type(within(dialog).getByLabelText('Container name'), 'httpd');
    await userEvent.type(within(dialog).getByLabelText('Image'), 'reg:5000/httpd:1');
    await userEvent.type(within(dialog).getByLabelText('Environment (KEY=value, one per line)'), 'MODE=prod');
    await userEvent.click(within(dialog).getByRole('button', { name: 'Add registry credentials' }));
    await userEvent.type(within(dialog).getByLabelText('Registry'), 'reg:5000');
    await userEvent.type(within(dialog).getByLabelText('Username'), 'puller');
    const password = within(dialog).getByLabelText('Password');
    expect(password.getAttribute('type')).toBe('password');
    expect(within(dialog).getByLabelText('Token (instead)').getAttribute('type')).toBe('password');
    await userEvent.type(password, 's3cret');
    await userEvent.click(within(dialog).getByRole('button', { name: 'Create' }));
    expect(await within(dialog).findByRole('alert')).toHaveProperty('textContent', expect.stringContaining('containers[0].image: unknown registry'));
    const sent = JSON.parse(calls.find((c) => c.init.method === 'POST')!.init.body as string);
    expect(sent.spec.containers[0]).toMatchObject({ name: 'httpd', image: 'reg:5000/httpd:1', env: { MODE: 'prod' }, restart_policy: 'always' });
    expect(sent.spec.registry_credentials).toEqual([{ registry: 'reg:5000', username: 'puller', password: 's3cret' }]);
  });

  it('a viewer sees no Create button', async () => {
    stubApi((url) => (url.startsWith('/v1/whoami') ? json({ role: 'viewer' }) : url.startsWith('/v1/pods') ? page([pod('alpha')]) : undefined));
    renderApp(<Pods />);
    await screen.findAllByTestId('pod-row');
    await waitFor(() => expect(screen.queryByRole('button', { name: 'Create pod' })).toBeNull());
  });
});

const detail = () => (
  <Routes>
    <Route path="/pods/:id" element={<PodDetail />} />
    <Route path="/pods" element={<p>list</p>} />
  </Routes>
);

describe('Pod detail', () => {
  it('shows container states, exit codes, restarts and OOM, the log, and the actions', async () => {
    const calls = stubApi((url) => {
      if (url.startsWith('/v1/pods/0190-api/logs'))
        return ndjson([
          { container: 'web', stream: 'stdout', time: '2026-12-07T09:00:01.000Z', line: 'GET / 200' },
          { container: 'web', stream: 'stderr', time: '2026-12-07T09:00:02.000Z', line: 'warn: slow' },
        ]);
      if (url.startsWith('/v1/pods')) return page([running]);
      return undefined;
    });
    renderApp(detail(), { path: '/pods/0190-api' });
    expect(await screen.findByRole('heading', { name: 'api' })).toBeTruthy();
    const rows = screen.getAllByTestId('container-row');
    expect(within(rows[0]).getByTestId('container-state').textContent).toBe('running');
    expect(within(rows[1]).getByTestId('container-state').textContent).toBe('exited');
    expect(within(rows[1]).getByText('137')).toBeTruthy();
    expect(within(rows[1]).getByText('5')).toBeTruthy();
    expect(within(rows[1]).getByText('OOM killed')).toBeTruthy();
    expect(within(rows[0]).getByText('no')).toBeTruthy();
    // Credentials read back without secrets: the registry and the username.
    expect(screen.getByText('reg:5000 (puller)')).toBeTruthy();
    const log = await screen.findByRole('log');
    await within(log).findByText('GET / 200');
    expect(within(log).getByText('warn: slow').closest('[data-stream]')?.getAttribute('data-stream')).toBe('stderr');
    const logCall = calls.find((c) => c.url.includes('/logs'))!;
    expect(logCall.url).toBe('/v1/pods/0190-api/logs?container=web&follow=true&tail=200');
    // Follow: the stream ended here (the stub closed it), and the page says so.
    await screen.findByText(/the stream ended/);
    for (const b of ['Start', 'Stop', 'Restart', 'Force stop', 'Delete', 'Run']) expect(screen.getByRole('button', { name: b })).toBeTruthy();
    await userEvent.click(screen.getByRole('button', { name: 'Force stop' }));
    await waitFor(() => expect(calls.some((c) => c.url === '/v1/pods/0190-api/stop?force=true' && c.init.method === 'POST')).toBe(true));
    await userEvent.click(screen.getByRole('button', { name: 'Restart' }));
    await waitFor(() => expect(calls.some((c) => c.url === '/v1/pods/0190-api/restart' && c.init.method === 'POST')).toBe(true));
  });

  it('a pending pod shows why it is not placed, and the log request error from the API', async () => {
    stubApi((url) => {
      if (url.includes('/logs')) return json({ error: { code: 'failed_precondition', message: 'pod alpha is not placed on a node yet' } }, 409);
      if (url.startsWith('/v1/pods')) return page([pod('alpha')]);
      return undefined;
    });
    renderApp(detail(), { path: '/pods/0190-alpha' });
    expect((await screen.findByTestId('pod-scheduling')).textContent).toContain('no node matches the node selector');
    expect(screen.getByTestId('pod-detail-phase').textContent).toBe('pending');
    expect(within(screen.getAllByTestId('container-row')[0]).getByTestId('container-state').textContent).toBe('not reported');
    expect(await screen.findByText('pod alpha is not placed on a node yet')).toBeTruthy();
  });

  it('a viewer sees the pod and its log but no buttons the API would refuse', async () => {
    stubApi((url) => {
      if (url.startsWith('/v1/whoami')) return json({ role: 'viewer' });
      if (url.includes('/logs')) return ndjson([]);
      if (url.startsWith('/v1/pods')) return page([running]);
      return undefined;
    });
    renderApp(detail(), { path: '/pods/0190-api' });
    await screen.findByRole('heading', { name: 'api' });
    await screen.findByRole('log');
    await waitFor(() => {
      for (const b of ['Start', 'Stop', 'Restart', 'Force stop', 'Delete', 'Run']) expect(screen.queryByRole('button', { name: b })).toBeNull();
    });
    expect(screen.queryByRole('form', { name: 'Run a command' })).toBeNull();
  });

  it('the exec form refuses an unclosed quote before opening anything', async () => {
    stubApi((url) => (url.includes('/logs') ? ndjson([]) : url.startsWith('/v1/pods') ? page([running]) : undefined));
    const ws = vi.fn();
    vi.stubGlobal('WebSocket', ws);
    renderApp(detail(), { path: '/pods/0190-api' });
    const form = await screen.findByRole('form', { name: 'Run a command' });
    const cmd = within(form).getByLabelText('Command');
    await userEvent.clear(cmd);
    await userEvent.type(cmd, `sh -c "echo`);
    await userEvent.click(within(form).getByRole('button', { name: 'Run' }));
    expect(await within(form).findByText(/unclosed " quote/)).toBeTruthy();
    expect(ws).not.toHaveBeenCalled();
  });
});
