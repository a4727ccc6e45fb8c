import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { json, page, renderApp, stubApi } from '../test/render';
import { validateVmForm, vmCreateBody, VmList } from './Vms';

afterEach(() => vi.unstubAllGlobals());

const vm = (name: string, phase: string) => ({
  id: `0190-${name}`,
  name,
  project: 'default',
  revision: 3,
  labels: {},
  spec: { vcpus: 1, memory_bytes: 256 << 20, volume_ids: [], nic_ids: [], ssh_authorized_keys: [], desired_state: 'running' },
  status: { phase, message: '', conditions: [], observed_revision: 0 },
  scheduling: { state: 'scheduled', reason: '' },
});

describe('VM form', () => {
  it('validates before sending', () => {
    const f = {
      name: 'Bad_Name',
      template: 't',
      rootMib: '0',
      vcpus: '0',
      memoryMib: 'x',
      hostname: '',
      networks: [],
      securityGroups: [],
      sshKeys: 'not a key',
      userData: '',
      nodeSelector: '',
    };
    expect(Object.keys(validateVmForm(f)).sort()).toEqual(['memoryMib', 'name', 'rootMib', 'sshKeys', 'vcpus']);
  });
  it('builds the API body with owned root volume and NICs', () => {
    const body = vmCreateBody(
      {
        name: 'web',
        template: 'tpl',
        rootMib: '64',
        vcpus: '2',
        memoryMib: '512',
        hostname: 'h',
        networks: ['n1'],
        securityGroups: ['g1'],
        sshKeys: 'ssh-ed25519 AAAA me\n',
        userData: '#cloud-config',
        nodeSelector: 'zone=a',
      },
      'default',
    );
    expect(body).toEqual({
      name: 'web',
      project: 'default',
      spec: {
        vcpus: 2,
        memory_bytes: 512 << 20,
        network_interfaces: [{ network_id: 'n1', security_group_ids: ['g1'] }],
        ssh_authorized_keys: ['ssh-ed25519 AAAA me'],
        root_volume: { template_id: 'tpl', size_bytes: 64 << 20 },
        hostname: 'h',
        user_data: '#cloud-config',
        node_selector: 'zone=a',
      },
    });
  });
});

describe('VmList', () => {
  it('lists VMs with their phase', async () => {
    stubApi((url) => (url.startsWith('/v1/vms') ? page([vm('alpha', 'running'), vm('beta', 'stopped')]) : undefined));
    renderApp(<VmList />);
    const rows = await screen.findAllByTestId('vm-row');
    expect(rows.map((r) => r.dataset.name)).toEqual(['beta', 'alpha']); // newest (highest UUIDv7) first
    expect(within(rows[1]).getByText('running')).toBeTruthy();
  });

  it('shows the form errors without calling the API, then the API message when it refuses', async () => {
    const calls = stubApi((url, init) =>
      url === '/v1/vms' && init.method === 'POST'
        ? json({ error: { code: 'invalid_argument', message: 'memory_bytes must be a multiple of 1 MiB' } }, 400)
        : undefined,
    );
    renderApp(<VmList />);
    await userEvent.click(await screen.findByRole('button', { name: 'Create VM' }));
    const dialog = await screen.findByRole('form', { name: 'Create VM' });
    await userEvent.type(within(dialog).getByLabelText('Name'), 'NOPE');
    await userEvent.click(within(dialog).getByRole('button', { name: 'Create' }));
    expect(await within(dialog).findByText(/lowercase letters/)).toBeTruthy();
    expect(calls.some((c) => c.init.method === 'POST')).toBe(false);

    await userEvent.clear(within(dialog).getByLabelText('Name'));
    await userEvent.type(within(dialog).getByLabelText('Name'), 'ok-name');
    await userEvent.click(within(dialog).getByRole('button', { name: 'Create' }));
    expect(await within(dialog).findByRole('alert')).toHaveProperty('textContent', expect.stringContaining('memory_bytes must be a multiple of 1 MiB'));
  });

  it('a viewer sees no buttons that the API would refuse', async () => {
    stubApi((url) => (url.startsWith('/v1/whoami') ? json({ role: 'viewer' }) : url.startsWith('/v1/vms') ? page([vm('alpha', 'running')]) : undefined));
    renderApp(<VmList />);
    await screen.findAllByTestId('vm-row');
    await waitFor(() => expect(screen.queryByRole('button', { name: 'Create VM' })).toBeNull());
  });
});
