import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { json, page, renderApp, stubApi, writes } from '../test/render';
import Nics from './Nics';

afterEach(() => vi.unstubAllGlobals());

const network = (id: string, name: string, project = 'default') => ({
  id,
  name,
  project,
  revision: 1,
  labels: {},
  spec: { ipv4_prefix: '10.0.0.0/24' },
  status: { phase: 'ready' },
});
const group = (id: string, name: string, project = 'default') => ({ id, name, project, revision: 1, labels: {}, spec: { rules: [] } });

describe('NIC create form', () => {
  it('checks the fields first, then posts the NIC on the chosen network with its address and security groups by id', async () => {
    const calls = stubApi((url, init) => {
      if (url === '/v1/nics' && init.method === 'POST') return json({ id: 'nic-new', name: 'eth-extra' }, 201);
      if (url.startsWith('/v1/networks')) return page([network('net-a', 'lan'), network('net-x', 'elsewhere', 'other')]);
      if (url.startsWith('/v1/security-groups')) return page([group('sg-web', 'web'), group('sg-ssh', 'ssh'), group('sg-theirs', 'db', 'other')]);
      return undefined;
    });
    renderApp(<Nics />);
    await userEvent.click(await screen.findByRole('button', { name: 'Create NIC' }));
    const form = await screen.findByRole('form', { name: 'Create NIC' });
    const networkSelect = within(form).getByLabelText('Network') as HTMLSelectElement;
    // Only the networks of the project the NIC goes to (all projects shown: `default`).
    await waitFor(() => expect([...networkSelect.options].map((o) => o.value)).toEqual(['', 'net-a']));

    await userEvent.type(within(form).getByLabelText('Name'), 'eth-extra');
    await userEvent.type(within(form).getByLabelText('IPv4 address'), '10.0.0.300x');
    await userEvent.type(within(form).getByLabelText('Security groups'), 'web, db');
    await userEvent.click(within(form).getByRole('button', { name: 'Create' }));
    expect(await within(form).findByText('choose a network')).toBeTruthy();
    expect(within(form).getByText('an IPv4 address like 10.0.0.5')).toBeTruthy();
    expect(within(form).getByText('unknown security group name')).toBeTruthy(); // db is another project's
    expect(writes(calls)).toEqual([]);

    await userEvent.selectOptions(networkSelect, 'net-a');
    await userEvent.clear(within(form).getByLabelText('IPv4 address'));
    await userEvent.type(within(form).getByLabelText('IPv4 address'), '10.0.0.7');
    await userEvent.clear(within(form).getByLabelText('Security groups'));
    await userEvent.type(within(form).getByLabelText('Security groups'), 'web, ssh');
    await userEvent.click(within(form).getByRole('button', { name: 'Create' }));
    await waitFor(() => expect(screen.queryByRole('form', { name: 'Create NIC' })).toBeNull()); // the dialog closes
    expect(writes(calls)).toEqual([
      {
        method: 'POST',
        url: '/v1/nics',
        body: { name: 'eth-extra', project: 'default', spec: { network_id: 'net-a', ipv4_address: '10.0.0.7', security_group_ids: ['sg-web', 'sg-ssh'] } },
        ifMatch: undefined,
      },
    ]);
  });

  it("shows the API's message when it refuses the NIC and keeps the form", async () => {
    stubApi((url, init) => {
      if (url === '/v1/nics' && init.method === 'POST')
        return json({ error: { code: 'already_exists', message: 'address 10.0.0.7 is taken on network lan' } }, 409);
      if (url.startsWith('/v1/networks')) return page([network('net-a', 'lan')]);
      return undefined;
    });
    renderApp(<Nics />);
    await userEvent.click(await screen.findByRole('button', { name: 'Create NIC' }));
    const form = await screen.findByRole('form', { name: 'Create NIC' });
    await userEvent.type(within(form).getByLabelText('Name'), 'eth1');
    await waitFor(() => expect((within(form).getByLabelText('Network') as HTMLSelectElement).options).toHaveLength(2));
    await userEvent.selectOptions(within(form).getByLabelText('Network'), 'net-a');
    await userEvent.type(within(form).getByLabelText('IPv4 address'), '10.0.0.7');
    await userEvent.click(within(form).getByRole('button', { name: 'Create' }));
    expect((await within(form).findByRole('alert')).textContent).toContain('address 10.0.0.7 is taken on network lan');
  });
});
