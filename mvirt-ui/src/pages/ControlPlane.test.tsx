import { afterEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, screen, waitFor } from '@testing-library/react';
import { json, renderApp, stubApi, writes } from '../test/render';
import ControlPlane from './ControlPlane';

afterEach(() => vi.unstubAllGlobals());

const member = (id: number, role: string) => ({ id, api_url: `https://10.0.0.${id}:8443`, raft_addr: `10.0.0.${id}:7000`, role });

describe('ControlPlane', () => {
  it('reads the members again on a member event from the stream, and only then', async () => {
    let push!: (text: string) => void;
    const events = new ReadableStream<Uint8Array>({ start: (c) => (push = (t) => c.enqueue(new TextEncoder().encode(t))) });
    let members = [member(1, 'leader')];
    const calls = stubApi((url) => {
      if (url.startsWith('/v1/events')) return new Response(events, { status: 200 });
      if (url.startsWith('/v1/controlplane')) return json({ member_id: 1, leader_id: 1, term: 2, state: 'leader', applied_index: 9, members });
      return undefined;
    });
    const reads = () => calls.filter((c) => c.url.startsWith('/v1/controlplane')).length;
    renderApp(<ControlPlane />);
    expect(await screen.findByText('https://10.0.0.1:8443')).toBeTruthy();
    expect(reads()).toBe(1);
    const send = (revision: number, type: string, id: number, object: unknown) =>
      push(`id: ${revision}\nevent: ${type}\ndata: ${JSON.stringify({ revision, type, kind: 'member', id: String(id), project: '', object })}\n\n`);
    // An event about something else reads nothing.
    push(
      `id: 10\nevent: network.created\ndata: ${JSON.stringify({ revision: 10, type: 'network.created', kind: 'network', id: 'x', project: 'default', object: { id: 'x', name: 'x', revision: 10 } })}\n\n`,
    );
    members = [member(1, 'leader'), member(2, 'learner')];
    send(11, 'member.joined', 2, { ...member(2, 'learner') });
    expect(await screen.findByText('https://10.0.0.2:8443')).toBeTruthy();
    expect(reads()).toBe(2);
    members = [member(2, 'leader')];
    send(12, 'member.removed', 1, null);
    await waitFor(() => expect(screen.queryByText('https://10.0.0.1:8443')).toBeNull());
    expect(reads()).toBe(3);
  });
  it('"Create join token" posts once and shows the secret once: leaving the page and coming back shows it no more', async () => {
    const secret = 'mvirt-join-7f3a9c2e51d04b8a';
    const calls = stubApi((url, init) => {
      if (url === '/v1/controlplane/join-tokens' && init.method === 'POST') return json({ token: secret, expires_at_ms: Date.UTC(2026, 0, 2, 3, 4) }, 201);
      if (url.startsWith('/v1/controlplane'))
        return json({ member_id: 1, leader_id: 1, term: 2, state: 'leader', applied_index: 9, members: [member(1, 'leader')] });
      return undefined;
    });
    const view = renderApp(<ControlPlane />);
    expect(await screen.findByText(/mvirt-api --join https:\/\/10\.0\.0\.1:8443 --token/)).toBeTruthy();
    expect(screen.queryByText(new RegExp(secret))).toBeNull();
    fireEvent.click(screen.getByRole('button', { name: 'Create join token' }));
    const shown = await screen.findByRole('status');
    expect(shown.textContent).toContain(secret);
    expect(shown.textContent).toContain(`expires ${new Date(Date.UTC(2026, 0, 2, 3, 4)).toLocaleString()}`);
    expect(writes(calls)).toEqual([{ method: 'POST', url: '/v1/controlplane/join-tokens', body: {}, ifMatch: undefined }]);

    // The secret lives only in the page that minted it: no read brings it back.
    view.unmount();
    renderApp(<ControlPlane />);
    await screen.findByRole('button', { name: 'Create join token' });
    await screen.findByText('https://10.0.0.1:8443');
    expect(screen.queryByText(new RegExp(secret))).toBeNull();
    expect(writes(calls)).toHaveLength(1);
  });
});
