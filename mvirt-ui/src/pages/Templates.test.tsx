import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { json, page, renderApp, stubApi } from '../test/render';
import Templates from './Templates';

afterEach(() => vi.unstubAllGlobals());

const template = {
  id: '0190-deb',
  name: 'debian',
  project: 'default',
  revision: 4,
  labels: {},
  spec: { source_url: 'http://images.example/debian.qcow2', format: 'qcow2' },
  status: {
    phase: 'importing',
    message: '',
    conditions: [],
    observed_revision: 4,
    import_bytes_done: 100 << 20,
    import_bytes_total: 400 << 20,
    nodes: {
      n1: { phase: 'ready', message: '', import_bytes_done: 400 << 20, import_bytes_total: 400 << 20 },
      n2: { phase: 'importing', message: 'downloading', import_bytes_done: 100 << 20, import_bytes_total: 400 << 20 },
    },
  },
};
const node = (id: string, name: string) => ({
  id,
  name,
  revision: 1,
  labels: {},
  spec: { schedulable: true },
  status: { state: 'online', address: '10.0.0.1', capacity: { vcpus: 4, memory_bytes: 1 << 30, storage_bytes: 1 << 30 } },
});

describe('Templates', () => {
  it("show each node's import, and cancel a running import (the API's refusal shown, with its request id)", async () => {
    const calls = stubApi((url, init) => {
      if (url.startsWith('/v1/whoami')) return json({ role: 'operator' });
      if (url === `/v1/templates/${template.id}/cancel` && init.method === 'POST')
        return json({ error: { code: 'failed_precondition', message: 'template debian: nothing to cancel', details: null, request_id: 'req-c1' } }, 409);
      if (url.startsWith('/v1/templates')) return page([template]);
      if (url.startsWith('/v1/nodes')) return page([node('n1', 'alpha'), node('n2', 'beta')]);
      return undefined;
    });
    renderApp(<Templates />);
    const row = (await screen.findAllByTestId('template-row'))[0];
    expect(within(row).getByText('25% of 400 MiB')).toBeTruthy();
    await userEvent.click(within(row).getByRole('button', { name: 'Details' }));
    const perNode = await screen.findAllByTestId('template-node-row');
    expect(perNode.map((r) => r.getAttribute('data-name'))).toEqual(['alpha', 'beta']);
    expect(within(perNode[0]).getByText('100% of 400 MiB')).toBeTruthy();
    expect(within(perNode[1]).getByText('downloading')).toBeTruthy();
    await userEvent.click(await within(row).findByRole('button', { name: 'Cancel import' }));
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('template debian: nothing to cancel');
    // The request's id links to the audit entries of its work.
    expect(within(alert).getByRole('link', { name: 'req-c1' }).getAttribute('href')).toBe('/audit?trace_id=req-c1');
    expect(calls.filter((c) => c.url.endsWith('/cancel') && c.init.method === 'POST')).toHaveLength(1);
  });

  it('a viewer gets no cancel or import button', async () => {
    const calls = stubApi((url) => (url.startsWith('/v1/whoami') ? json({ role: 'viewer' }) : url.startsWith('/v1/templates') ? page([template]) : undefined));
    renderApp(<Templates />);
    await screen.findAllByTestId('template-row');
    await waitFor(() => expect(calls.some((c) => c.url.startsWith('/v1/whoami'))).toBe(true));
    await new Promise((r) => setTimeout(r, 50));
    expect(screen.queryByRole('button', { name: 'Cancel import' })).toBeNull();
    expect(screen.queryByRole('button', { name: 'Create template' })).toBeNull();
    expect(screen.getByRole('button', { name: 'Details' })).toBeTruthy();
  });
});
