import { describe, expect, it, vi } from 'vitest';
import { QueryClient } from '@tanstack/react-query';
import { applyEvent, listKey, LiveSync, type LiveList } from './live';
import type { ApiEvent } from './events';

const obj = (id: string, revision: number, name = id) => ({ id, name, revision, project: 'default' });
const event = (id: string, revision: number, object: ReturnType<typeof obj> | null): ApiEvent => ({
  revision,
  type: object ? 'vm.updated' : 'vm.deleted',
  kind: 'vm',
  id,
  project: 'default',
  object,
});

describe('applyEvent', () => {
  const base: LiveList = { items: [obj('01', 3), obj('03', 4)], revision: 4 };
  it('inserts new objects in id order', () => {
    expect(applyEvent(base, event('02', 5, obj('02', 5))).items.map((x) => x.id)).toEqual(['01', '02', '03']);
    expect(applyEvent(base, event('09', 5, obj('09', 5))).items.map((x) => x.id)).toEqual(['01', '03', '09']);
  });
  it('replaces an object only with a newer revision, and removes on deletion', () => {
    const updated = applyEvent(base, event('01', 6, obj('01', 6, 'renamed')));
    expect(updated.items[0].name).toBe('renamed');
    expect(updated.revision).toBe(6);
    expect(applyEvent(updated, event('01', 5, obj('01', 5, 'stale'))).items[0].name).toBe('renamed');
    expect(applyEvent(base, event('03', 7, null)).items.map((x) => x.id)).toEqual(['01']);
  });
  it('keeps unchanged objects identical (so memoized rows do not re-render)', () => {
    const next = applyEvent(base, event('03', 5, obj('03', 5)));
    expect(next.items[0]).toBe(base.items[0]);
  });
});

describe('LiveSync', () => {
  it('applies events that arrived while a list was loading if they are newer than the read', async () => {
    const qc = new QueryClient();
    const sync = new LiveSync(qc);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    vi.stubGlobal(
      'fetch',
      vi.fn(async () => {
        await gate;
        return new Response(JSON.stringify({ items: [obj('01', 3)], next_page_token: null, revision: 10 }));
      }),
    );
    const loading = sync.load('vm');
    sync.streamStarts(8);
    sync.onEvent(event('01', 9, obj('01', 9, 'old news'))); // before the read: already in it
    sync.onEvent(event('02', 11, obj('02', 11)));
    sync.onEvent(event('01', 12, null));
    release();
    const list = await loading;
    vi.unstubAllGlobals();
    expect(list.items.map((x) => x.id)).toEqual(['02']);
    // Once loaded into the cache, later events go straight there.
    qc.setQueryData(listKey('vm'), list);
    sync.onEvent(event('03', 13, obj('03', 13)));
    expect(qc.getQueryData<LiveList>(listKey('vm'))!.items.map((x) => x.id)).toEqual(['02', '03']);
  });

  it('reads a list again when it is older than where the stream starts (the events between would be missing)', async () => {
    const sync = new LiveSync(new QueryClient());
    const revisions = [5, 12];
    const fetchMock = vi.fn(async () => new Response(JSON.stringify({ items: [obj('01', 3)], next_page_token: null, revision: revisions.shift() })));
    vi.stubGlobal('fetch', fetchMock);
    const loading = sync.load('vm');
    sync.streamStarts(10);
    const list = await loading;
    vi.unstubAllGlobals();
    expect(list.revision).toBe(12);
    expect(fetchMock).toHaveBeenCalledTimes(2);
  });

  it('takes the reads early.ts started once each, and falls back to its own reads', async () => {
    const early = {
      health: Promise.resolve({ applied_revision: 7 }),
      lists: {
        vm: Promise.resolve({ items: [obj('01', 3)], revision: 7 }),
        node: Promise.reject(new Error('HTTP 500')),
      },
    };
    const fetchMock = vi.fn(async () => new Response(JSON.stringify({ items: [obj('09', 8)], next_page_token: null, revision: 8 })));
    vi.stubGlobal('fetch', fetchMock);
    const sync = new LiveSync(new QueryClient(), early);
    expect(await sync.health(() => Promise.resolve({ applied_revision: 99 }))).toEqual({ applied_revision: 7 });
    expect(await sync.health(() => Promise.resolve({ applied_revision: 99 }))).toEqual({ applied_revision: 99 });
    sync.streamStarts(7);
    expect((await sync.load('vm')).items.map((x) => x.id)).toEqual(['01']);
    expect(fetchMock).not.toHaveBeenCalled();
    // The failed early read is asked again through the client; a second load reads afresh.
    expect((await sync.load('node')).items.map((x) => x.id)).toEqual(['09']);
    expect((await sync.load('vm')).items.map((x) => x.id)).toEqual(['09']);
    expect(fetchMock).toHaveBeenCalledTimes(2);
    vi.unstubAllGlobals();
  });
});
