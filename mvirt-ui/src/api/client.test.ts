import { describe, expect, it, vi } from 'vitest';
import { api, ApiError, errorFrom, getSession, listAll, setSession } from './client';

describe('errors', () => {
  it('carry the API envelope message, code, details and request id', () => {
    const e = errorFrom(409, '{"error":{"code":"conflict","message":"network n is in use","details":{"in_use_by":["x"]},"request_id":"req-9"}}');
    expect(e).toBeInstanceOf(ApiError);
    expect([e.status, e.code, e.message, e.requestId]).toEqual([409, 'conflict', 'network n is in use', 'req-9']);
    expect(e.details).toEqual({ in_use_by: ['x'] });
    expect(errorFrom(404, '{"error":{"code":"not_found","message":"no","details":null,"request_id":null}}').requestId).toBeUndefined();
  });
  it('fall back to the body text when it is not an envelope', () => {
    expect(errorFrom(502, 'Bad Gateway').message).toBe('Bad Gateway');
    expect(errorFrom(500, '').message).toBe('HTTP 500');
  });
  it('a 401 ends the session', async () => {
    setSession({ token: 't' });
    vi.stubGlobal(
      'fetch',
      vi.fn(async () => new Response('{"error":{"code":"unauthenticated","message":"unknown or revoked token"}}', { status: 401 })),
    );
    await expect(api('/v1/vms')).rejects.toThrow('unknown or revoked token');
    vi.unstubAllGlobals();
    expect(getSession()).toBeNull();
  });
});

describe('listAll', () => {
  it('follows next_page_token and keeps the lowest revision', async () => {
    const urls: string[] = [];
    vi.stubGlobal(
      'fetch',
      vi.fn(async (url: string, init: RequestInit) => {
        urls.push(url);
        expect(new Headers(init.headers).get('Authorization')).toBe('Bearer tok');
        return url.includes('page_token=b')
          ? new Response(JSON.stringify({ items: [{ id: 'c' }], next_page_token: null, revision: 8 }))
          : new Response(JSON.stringify({ items: [{ id: 'a' }, { id: 'b' }], next_page_token: 'b', revision: 7 }));
      }),
    );
    setSession({ token: 'tok' });
    const r = await listAll<{ id: string }>('/v1/vms');
    vi.unstubAllGlobals();
    expect(r.items.map((x) => x.id)).toEqual(['a', 'b', 'c']);
    expect(r.revision).toBe(7);
    expect(urls[0]).toBe('/v1/vms?limit=1000');
  });
});
