import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { eventStream, json, page, renderApp, stubApi, writes } from '../test/render';
import Nodes from './Nodes';

afterEach(() => vi.unstubAllGlobals());

const node = {
  id: 'n1',
  name: 'alpha',
  project: '',
  revision: 3,
  labels: { zone: 'a' },
  spec: { schedulable: true },
  status: { state: 'online', address: '10.0.0.1', capacity: { vcpus: 4, memory_bytes: 1 << 30, storage_bytes: 1 << 30 }, agent_version: '' },
  allocated: { vcpus: 0, memory_bytes: 0, storage_bytes: 0 },
};

describe('node labels', () => {
  it('checks the labels, then saves them with If-Match of the revision shown; the row follows the event', async () => {
    const events = eventStream();
    const saved = { ...node, revision: 4, labels: { zone: 'b', ssd: 'yes' } };
    const calls = stubApi((url, init) => {
      if (url.startsWith('/v1/events')) return events.response();
      if (url.startsWith('/v1/whoami')) return json({ role: 'admin' });
      if (url === '/v1/nodes/n1' && init.method === 'PUT') return json(saved);
      if (url.startsWith('/v1/nodes')) return page([node]);
      return undefined;
    });
    renderApp(<Nodes />);
    const row = (await screen.findAllByTestId('node-row')).find((r) => r.dataset.name === 'alpha')!;
    expect(within(row).getByText('zone=a')).toBeTruthy();
    await userEvent.click(within(row).getByRole('button', { name: 'Details' }));
    const form = await screen.findByRole('form', { name: 'Labels of alpha' });
    const input = within(form).getByLabelText('Labels (k=v,k2=v2)');
    expect((input as HTMLInputElement).value).toBe('zone=a');

    await userEvent.clear(input);
    await userEvent.type(input, 'zone=b,ssd');
    await userEvent.click(within(form).getByRole('button', { name: 'Save labels' }));
    expect(await within(form).findByText('"ssd" is not key=value')).toBeTruthy();
    expect(writes(calls)).toEqual([]);

    await userEvent.type(input, '=yes');
    await userEvent.click(within(form).getByRole('button', { name: 'Save labels' }));
    await waitFor(() => expect(writes(calls)).toHaveLength(1));
    expect(writes(calls)).toEqual([{ method: 'PUT', url: '/v1/nodes/n1', body: { labels: { zone: 'b', ssd: 'yes' } }, ifMatch: '"3"' }]);
    events.send(4, 'node.updated', 'n1', '', saved);
    await waitFor(() => expect(within(screen.getAllByTestId('node-row')[0]).getByText('zone=b,ssd=yes')).toBeTruthy());
  });

  it("a refused save shows the API's message", async () => {
    stubApi((url, init) => {
      if (url.startsWith('/v1/whoami')) return json({ role: 'admin' });
      if (url === '/v1/nodes/n1' && init.method === 'PUT')
        return json({ error: { code: 'failed_precondition', message: 'revision 3 is stale: the node is at revision 5' } }, 412);
      if (url.startsWith('/v1/nodes')) return page([node]);
      return undefined;
    });
    renderApp(<Nodes />);
    const row = (await screen.findAllByTestId('node-row'))[0];
    await userEvent.click(within(row).getByRole('button', { name: 'Details' }));
    const form = await screen.findByRole('form', { name: 'Labels of alpha' });
    await userEvent.click(within(form).getByRole('button', { name: 'Save labels' }));
    expect((await screen.findByRole('alert')).textContent).toContain('revision 3 is stale: the node is at revision 5');
  });
});
