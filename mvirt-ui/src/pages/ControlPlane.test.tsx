import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor } from '@testing-library/react';
import { json, renderApp, stubApi } from '../test/render';
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
});
