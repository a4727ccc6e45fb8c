import { afterEach, describe, expect, it, vi } from 'vitest';
import { screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { json, renderApp, stubApi } from '../test/render';
import Tokens, { tokenBody, validateProjects } from './Tokens';
import { validateRule } from './SecurityGroups';

afterEach(() => vi.unstubAllGlobals());

describe('Tokens', () => {
  it('shows a new token secret once, and no more after Done', async () => {
    const tokens = [{ id: 't1', name: 'admin', role: 'admin', created_at: '2026-01-01T00:00:00Z' }];
    stubApi((url, init) => {
      if (url === '/v1/tokens' && init.method === 'POST') {
        const t = { id: 't2', name: JSON.parse(init.body as string).name, role: 'admin', created_at: '2026-01-01T00:00:00Z' };
        tokens.push(t);
        return json({ ...t, token: 's3cr3t-value' }, 201);
      }
      if (url === '/v1/tokens') return json(tokens);
      return undefined;
    });
    renderApp(<Tokens />);
    const form = await screen.findByRole('form', { name: 'Create token' });
    await userEvent.type(within(form).getByLabelText('Name'), 'ci');
    await userEvent.click(within(form).getByRole('button', { name: 'Create' }));
    expect((await screen.findByTestId('token-secret')).textContent).toBe('s3cr3t-value');
    expect(await screen.findByText('ci')).toBeTruthy();
    await userEvent.click(screen.getByRole('button', { name: 'Done' }));
    expect(screen.queryByText('s3cr3t-value')).toBeNull();
  });
});

describe('token roles and projects', () => {
  it('scope only operator and viewer tokens, by project name', () => {
    expect(validateProjects('viewer', 'default, team-a')).toBeUndefined();
    expect(validateProjects('admin', 'default')).toMatch(/only operator and viewer/);
    expect(validateProjects('operator', 'Bad Name')).toMatch(/not a project name/);
    expect(tokenBody({ name: 'ci', role: 'viewer', projects: ' default ,team-a,' })).toEqual({ name: 'ci', role: 'viewer', projects: ['default', 'team-a'] });
    expect(tokenBody({ name: 'ci', role: 'admin', projects: '' })).toEqual({ name: 'ci', role: 'admin' });
  });
});

describe('Tokens after a drop', () => {
  it('are read again when the event stream comes back after a drop (a safety net besides the replay)', async () => {
    let reads = 0;
    let streams = 0;
    stubApi((url) => {
      if (url === '/v1/tokens') {
        reads++;
        return json([{ id: `t${reads}`, name: `token-${reads}`, role: 'admin', created_at: '2026-01-01T00:00:00Z' }]);
      }
      if (url.startsWith('/v1/events')) {
        streams++;
        // The first stream ends at once (a dropped connection); the second stays open.
        if (streams === 1) return new Response('', { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
        return new Promise<Response>((resolve) =>
          resolve(new Response(new ReadableStream({ start: () => undefined }), { status: 200, headers: { 'Content-Type': 'text/event-stream' } })),
        );
      }
      return undefined;
    });
    renderApp(<Tokens />);
    expect(await screen.findByText('token-2', undefined, { timeout: 3000 })).toBeTruthy();
    expect(streams).toBe(2);
    expect(reads).toBe(2);
  });
});

describe('Tokens live', () => {
  it('follow token events from the stream (created, bound, revoked) without reading the list again', async () => {
    let push!: (text: string) => void;
    const events = new ReadableStream<Uint8Array>({ start: (c) => (push = (t) => c.enqueue(new TextEncoder().encode(t))) });
    const calls = stubApi((url) => {
      if (url.startsWith('/v1/events')) return new Response(events, { status: 200 });
      if (url === '/v1/tokens') return json([{ id: 't1', name: 'root', role: 'admin', created_at: '2026-01-01T00:00:00Z' }]);
      return undefined;
    });
    renderApp(<Tokens />);
    expect(await screen.findByText('root')).toBeTruthy();
    const send = (revision: number, type: string, id: string, object: unknown) =>
      push(`id: ${revision}\nevent: ${type}\ndata: ${JSON.stringify({ revision, type, kind: 'token', id, project: '', object })}\n\n`);
    const made = { id: 't2', name: 'reader', role: 'viewer', projects: ['team-a'], created_at: '2026-01-02T00:00:00Z', revision: 5 };
    send(5, 'token.created', 't2', made);
    const row = await screen.findByText('reader');
    expect(row.closest('tr')?.textContent).toContain('team-a');
    send(6, 'token.created', 't3', { id: 't3', name: 'agent', role: 'node', created_at: '2026-01-02T00:00:00Z', revision: 6 });
    await screen.findByText('agent');
    send(7, 'token.updated', 't3', { id: 't3', name: 'agent', role: 'node', node_id: 'n1', created_at: '2026-01-02T00:00:00Z', revision: 7 });
    send(8, 'token.deleted', 't2', null);
    await waitFor(() => expect(screen.queryByText('reader')).toBeNull());
    expect(screen.getByText('agent')).toBeTruthy();
    expect(calls.filter((c) => c.url === '/v1/tokens').length).toBe(1);
  });
});

describe('security group rules', () => {
  it('are checked before sending', () => {
    expect(validateRule({ protocol: 'tcp', port_min: '22', port_max: '22', cidr: '0.0.0.0/0' })).toEqual({});
    expect(validateRule({ protocol: 'tcp', port_min: '80', port_max: '79', cidr: '' }).port_max).toMatch(/below/);
    expect(validateRule({ protocol: 'udp', port_min: '0', port_max: '70000', cidr: 'x' })).toMatchObject({
      port_min: expect.any(String),
      port_max: expect.any(String),
      cidr: expect.any(String),
    });
    expect(validateRule({ protocol: 'icmp', port_min: '', port_max: '', cidr: '' })).toEqual({});
  });
});
