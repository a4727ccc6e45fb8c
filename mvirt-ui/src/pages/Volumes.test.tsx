import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { eventStream, json, page, renderApp, stubApi, writes } from '../test/render';
import Volumes from './Volumes';

afterEach(() => vi.unstubAllGlobals());

const snapshot = (id: string, name: string) => ({ id, name, created_at: '2026-12-01T10:00:00Z', status: { phase: 'ready', message: '' } });
const volume = {
  id: 'vol-1',
  name: 'data',
  project: 'default',
  revision: 4,
  labels: {},
  spec: { size_bytes: 64 << 20 },
  status: { phase: 'ready' },
  snapshots: [snapshot('snap-a', 'before-upgrade'), snapshot('snap-b', 'nightly')],
};
const ROLLBACK = '/v1/volumes/{id}/snapshots/{snapshot_id}/rollback';

function routes(rollback: (url: string) => Response | undefined, paths: string[] = [ROLLBACK]) {
  const events = eventStream();
  const calls = stubApi((url, init) => {
    if (url.startsWith('/v1/events')) return events.response();
    if (url === '/v1/openapi.json') return json({ paths: Object.fromEntries(paths.map((p) => [p, {}])) });
    if (init.method === 'POST' && url.endsWith('/rollback')) return rollback(url);
    if (url.startsWith('/v1/volumes')) return page([volume]);
    return undefined;
  });
  return { calls, events };
}

async function openPanel() {
  renderApp(<Volumes />);
  const row = (await screen.findAllByTestId('volume-row')).find((r) => r.dataset.name === 'data')!;
  await userEvent.click(within(row).getByRole('button', { name: 'Details' }));
  return screen.findByRole('table', { name: 'Snapshots of data' });
}

describe('Volumes rollback', () => {
  it("rolls back to the chosen snapshot (POST, no body) and shows the API's refusal", async () => {
    const { calls } = routes(() => json({ error: { code: 'failed_precondition', message: 'volume data is attached to a running VM: stop it first' } }, 409));
    const table = await openPanel();
    const nightly = within(table).getByText('nightly').closest('tr')!;
    await userEvent.click(await within(nightly).findByRole('button', { name: 'Roll back' }));
    expect((await screen.findByRole('alert')).textContent).toContain('volume data is attached to a running VM: stop it first');
    expect(writes(calls)).toEqual([{ method: 'POST', url: '/v1/volumes/vol-1/snapshots/snap-b/rollback', body: undefined, ifMatch: undefined }]);
  });

  it('a rollback the API accepts shows no error, and the volume follows its event', async () => {
    const { calls, events } = routes(() => json({ ...volume, revision: 5 }, 202));
    const table = await openPanel();
    const first = within(table).getByText('before-upgrade').closest('tr')!;
    await userEvent.click(await within(first).findByRole('button', { name: 'Roll back' }));
    await waitFor(() =>
      expect(writes(calls)).toEqual([{ method: 'POST', url: '/v1/volumes/vol-1/snapshots/snap-a/rollback', body: undefined, ifMatch: undefined }]),
    );
    // Rolling back to the older snapshot drops the newer one: the panel follows the event.
    events.send(6, 'volume.updated', volume.id, 'default', { ...volume, revision: 6, snapshots: [volume.snapshots[0]] });
    await waitFor(() => {
      const now = screen.getByRole('table', { name: 'Snapshots of data' });
      expect(within(now).queryByText('nightly')).toBeNull();
      expect(within(now).getByText('before-upgrade')).toBeTruthy();
    });
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('offers no Roll back when the live spec has no rollback path', async () => {
    routes(() => undefined, []);
    const table = await openPanel();
    expect(await screen.findByText('Rollback appears here once the API offers it.')).toBeTruthy();
    expect(within(table).queryByRole('button', { name: 'Roll back' })).toBeNull();
  });
});
