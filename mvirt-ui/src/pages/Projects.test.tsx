import { afterEach, describe, expect, it, vi } from 'vitest';
import { render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { App } from '../App';
import { json, page, renderApp, stubApi, writes } from '../test/render';
import Projects from './Projects';

afterEach(() => vi.unstubAllGlobals());

const project = (id: string, name: string, description = '') => ({ id, name, description, revision: 1, labels: {}, created_at: '2026-12-01T10:00:00Z' });
const network = (id: string, name: string, projectName: string) => ({
  id,
  name,
  project: projectName,
  revision: 1,
  labels: {},
  spec: { ipv4_prefix: '10.0.0.0/24' },
  status: { phase: 'ready' },
});

describe('the project switcher', () => {
  it('switching shows only that project, is kept, and is the project a create is sent to', async () => {
    const calls = stubApi((url, init) => {
      if (url.startsWith('/v1/whoami')) return json({ id: 't', name: 't', role: 'admin', projects: [] });
      if (url === '/v1/networks' && init.method === 'POST') return json({ id: 'net-new' }, 201);
      if (url.startsWith('/v1/projects')) return page([project('p1', 'default'), project('p2', 'web')]);
      if (url.startsWith('/v1/networks')) return page([network('n1', 'lan', 'default'), network('n2', 'front', 'web')]);
      return undefined;
    });
    sessionStorage.setItem('mvirt.token', 'test-token');
    window.history.pushState({}, '', '/networks');
    render(<App />);
    const names = async () => (await screen.findAllByTestId('network-row')).map((r) => r.dataset.name).sort();
    await waitFor(async () => expect(await names()).toEqual(['front', 'lan']));
    const switcher = screen.getByRole('combobox', { name: 'Project' }) as HTMLSelectElement;
    await waitFor(() => expect([...switcher.options].map((o) => o.value)).toEqual(['*', 'default', 'web']));
    const listReads = () => calls.filter((c) => c.url.startsWith('/v1/networks') && (c.init.method ?? 'GET') === 'GET').length;
    const readsBefore = listReads();

    await userEvent.selectOptions(switcher, 'web');
    await waitFor(async () => expect(await names()).toEqual(['front']));
    expect(localStorage.getItem('mvirt.project')).toBe('web');
    // The lists are read once for every project and kept live: switching filters, it reads nothing.
    expect(listReads()).toBe(readsBefore);

    await userEvent.click(screen.getByRole('button', { name: 'Create network' }));
    const form = await screen.findByRole('form', { name: 'Create network' });
    await userEvent.type(within(form).getByLabelText('Name'), 'back');
    await userEvent.type(within(form).getByLabelText('IPv4 prefix'), '10.1.0.0/24');
    await userEvent.click(within(form).getByRole('button', { name: 'Create' }));
    await waitFor(() => expect(writes(calls)).toHaveLength(1));
    expect(writes(calls)[0]).toMatchObject({ method: 'POST', url: '/v1/networks', body: { name: 'back', project: 'web' } });

    await userEvent.selectOptions(switcher, '*');
    await waitFor(async () => expect(await names()).toEqual(['front', 'lan']));
  });
});

describe('Projects', () => {
  const routes = (extra: (url: string, init: RequestInit) => Response | undefined) =>
    stubApi(
      (url, init) => extra(url, init) ?? (url.startsWith('/v1/projects') ? page([project('p1', 'default'), project('p2', 'web', 'the shop')]) : undefined),
    );

  it('creates a project after the form checked it', async () => {
    const calls = routes((url, init) => (url === '/v1/projects' && init.method === 'POST' ? json(project('p3', 'batch', 'nightly jobs'), 201) : undefined));
    renderApp(<Projects />);
    await screen.findByText('the shop');
    await userEvent.click(screen.getByRole('button', { name: 'Create project' }));
    const form = await screen.findByRole('form', { name: 'Create project' });
    await userEvent.type(within(form).getByLabelText('Name'), 'Batch Jobs');
    await userEvent.click(within(form).getByRole('button', { name: 'Create' }));
    expect(await within(form).findByText(/lowercase letters/)).toBeTruthy();
    expect(writes(calls)).toEqual([]);

    await userEvent.clear(within(form).getByLabelText('Name'));
    await userEvent.type(within(form).getByLabelText('Name'), 'batch');
    await userEvent.type(within(form).getByLabelText('Description'), 'nightly jobs');
    await userEvent.click(within(form).getByRole('button', { name: 'Create' }));
    await waitFor(() => expect(screen.queryByRole('form', { name: 'Create project' })).toBeNull());
    expect(writes(calls)).toEqual([{ method: 'POST', url: '/v1/projects', body: { name: 'batch', description: 'nightly jobs' }, ifMatch: undefined }]);
  });

  it("deletes a project after confirming; a refusal shows the API's message", async () => {
    const calls = routes((url, init) =>
      url === '/v1/projects/p2' && init.method === 'DELETE'
        ? json({ error: { code: 'failed_precondition', message: 'project web still holds 2 VMs and 1 network' } }, 409)
        : undefined,
    );
    renderApp(<Projects />);
    const row = (await screen.findAllByTestId('project-row')).find((r) => r.dataset.name === 'web')!;
    await userEvent.click(within(row).getByRole('button', { name: 'Delete' }));
    expect(writes(calls)).toEqual([]); // asks first
    await userEvent.click(within(row).getByRole('button', { name: 'Yes, delete' }));
    expect((await screen.findByRole('alert')).textContent).toContain('project web still holds 2 VMs and 1 network');
    expect(writes(calls)).toEqual([{ method: 'DELETE', url: '/v1/projects/p2', body: undefined, ifMatch: undefined }]);
  });
});
