import { afterEach, describe, expect, it, vi } from 'vitest';
import { KIND_PATH } from './api/live';
import { EARLY_PATHS, kindsFor, startEarly } from './early';

afterEach(() => vi.unstubAllGlobals());

describe('early reads', () => {
  it('know the same collections as the live layer', () => {
    expect(EARLY_PATHS).toEqual(KIND_PATH);
  });

  it('read what the page at the URL shows first, and the projects', () => {
    expect(kindsFor('/vms')).toEqual(['vm', 'node']);
    expect(kindsFor('/vms/0190-x')).toEqual(['vm', 'node']);
    expect(kindsFor('/')).toContain('vm');
    expect(kindsFor('/audit')).toEqual([]);
  });

  it('read nothing without a token, and every page of a list with one', async () => {
    expect(startEarly('/vms', null)).toBeUndefined();
    const urls: string[] = [];
    vi.stubGlobal(
      'fetch',
      vi.fn(async (url: string, init: RequestInit) => {
        urls.push(url);
        expect(new Headers(init.headers).get('Authorization')).toBe('Bearer tok');
        if (url === '/v1/health') return new Response(JSON.stringify({ applied_revision: 4 }));
        if (url === '/v1/vms?limit=1000') return new Response(JSON.stringify({ items: [{ id: 'a', revision: 1 }], next_page_token: 'a', revision: 6 }));
        if (url === '/v1/vms?limit=1000&page_token=a')
          return new Response(JSON.stringify({ items: [{ id: 'b', revision: 2 }], next_page_token: null, revision: 5 }));
        return new Response(JSON.stringify({ items: [], next_page_token: null, revision: 5 }));
      }),
    );
    const early = startEarly('/vms', 'tok')!;
    expect(await early.health).toEqual({ applied_revision: 4 });
    expect(await early.lists.vm).toEqual({
      items: [
        { id: 'a', revision: 1 },
        { id: 'b', revision: 2 },
      ],
      revision: 5,
    });
    expect(Object.keys(early.lists).sort()).toEqual(['node', 'project', 'vm']);
    await early.lists.node;
    expect(urls).toContain('/v1/projects?limit=1000');
  });
});
