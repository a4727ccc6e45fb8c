// Resource lists kept live from the event stream. A list is read once (every page) into the
// query cache under ['list', kind]; each event then replaces, inserts or removes its object
// there. Events that arrive while a list is still loading are kept in a short buffer and applied
// to the list when it lands if they are newer than the revision it was read at, so no change
// falls between the read and the stream.
import type { QueryClient } from '@tanstack/react-query';
import type { Early } from '../early';
import { listAll } from './client';
import type { ApiEvent } from './events';

export type Kind = 'project' | 'node' | 'network' | 'nic' | 'security_group' | 'template' | 'volume' | 'vm' | 'pod';

export const KIND_PATH: Record<Kind, string> = {
  project: '/v1/projects',
  node: '/v1/nodes',
  network: '/v1/networks',
  nic: '/v1/nics',
  security_group: '/v1/security-groups',
  template: '/v1/templates',
  volume: '/v1/volumes',
  vm: '/v1/vms',
  pod: '/v1/pods',
};

export interface Resource {
  id: string;
  name: string;
  revision: number;
  project?: string;
  [k: string]: unknown;
}

export interface LiveList<T extends Resource = Resource> {
  items: T[];
  /** The revision the list reflects (its read, or the newest event applied). */
  revision: number;
}

export const listKey = (kind: Kind) => ['list', kind] as const;

/** Applies one event to a list (pure; returns the same list when nothing changed). */
export function applyEvent<T extends Resource>(list: LiveList<T>, e: ApiEvent): LiveList<T> {
  const i = list.items.findIndex((x) => x.id === e.id);
  const revision = Math.max(list.revision, e.revision);
  if (!e.object) {
    if (i < 0) return revision === list.revision ? list : { ...list, revision };
    const items = list.items.slice();
    items.splice(i, 1);
    return { items, revision };
  }
  const obj = e.object as T;
  if (i >= 0) {
    if ((list.items[i].revision ?? 0) > (obj.revision ?? 0)) return list;
    const items = list.items.slice();
    items[i] = obj;
    return { items, revision };
  }
  // Ids are UUIDv7 and lists come sorted by id: keep that order (a new object is usually last).
  const items = list.items.slice();
  let at = items.length;
  while (at > 0 && items[at - 1].id > obj.id) at--;
  items.splice(at, 0, obj);
  return { items, revision };
}

/** A token as `GET /v1/tokens` lists it. */
interface TokenRow {
  id: string;
  name: string;
  role: string;
  projects?: string[];
  node_id?: string | null;
  created_at: string;
}

/** Applies a `token.*` event to the token list as `GET /v1/tokens` gives it (pure). The event's
 *  object is the token without its secret or hash (`null` once revoked). */
export function applyTokenEvent<T extends TokenRow>(list: T[], e: ApiEvent): T[] {
  const rest = list.filter((t) => t.id !== e.id);
  if (!e.object) return rest.length === list.length ? list : rest;
  const o = e.object as Partial<TokenRow>;
  const row = {
    id: e.id,
    name: o.name ?? '',
    role: o.role ?? '',
    projects: o.projects ?? [],
    created_at: o.created_at ?? '',
    ...(o.node_id ? { node_id: o.node_id } : {}),
  } as T;
  const i = list.findIndex((t) => t.id === e.id);
  if (i >= 0) {
    const items = list.slice();
    items[i] = row;
    return items;
  }
  return [...list, row];
}

const BUFFER = 5000;

export class LiveSync {
  private buffer: ApiEvent[] = [];
  private listeners = new Set<(e: ApiEvent) => void>();
  private startedAt!: (from: number | undefined) => void;
  /** The revision the stream starts after (undefined: the API did not say; live feed only). */
  readonly start: Promise<number | undefined> = new Promise((resolve) => (this.startedAt = resolve));
  /** Reads started before the app ran (src/early.ts), each taken once. */
  constructor(
    private qc: QueryClient,
    private early: Early | undefined = typeof window === 'undefined' ? undefined : window.__mvirtEarly,
  ) {
    if (typeof window !== 'undefined') window.__mvirtEarly = undefined;
  }

  /** The health read that decides where the stream starts: the early one if there is one. */
  health(read: () => Promise<{ applied_revision: number }>): Promise<{ applied_revision: number }> {
    const early = this.early?.health;
    if (this.early) this.early.health = undefined;
    return early ? early.catch(read) : read();
  }

  /** The stream opens after `from`: lists read at an older revision are read again. */
  streamStarts(from: number | undefined) {
    this.startedAt(from);
  }

  onEvent = (e: ApiEvent) => {
    this.buffer.push(e);
    if (this.buffer.length > BUFFER) this.buffer.splice(0, this.buffer.length - BUFFER);
    const kind = e.kind as Kind;
    if (KIND_PATH[kind]) {
      this.qc.setQueryData<LiveList>(listKey(kind), (old) => (old ? applyEvent(old, e) : old));
    }
    // What pages read directly rather than as a live list: the token list is updated in
    // place; the control plane's view (who leads, log indexes) is read again on a member event.
    if (e.kind === 'token') this.qc.setQueryData<TokenRow[]>(['tokens'], (old) => (old ? applyTokenEvent(old, e) : old));
    if (e.kind === 'member') void this.qc.invalidateQueries({ queryKey: ['controlplane'] });
    if (e.kind === 'vm' || e.kind === 'pod') {
      // The detail pages' direct reads (before the list has the object) follow the stream too.
      if (e.object) this.qc.setQueryData([e.kind, e.id], e.object);
      else this.qc.removeQueries({ queryKey: [e.kind, e.id] });
    }
    this.listeners.forEach((l) => l(e));
  };

  /** Every event, for views that show the stream itself (recent events). */
  subscribe(l: (e: ApiEvent) => void) {
    this.listeners.add(l);
    return () => {
      this.listeners.delete(l);
    };
  }

  recent(n: number): ApiEvent[] {
    return this.buffer.slice(-n);
  }

  /** Reads a whole list and brings it up to date with buffered events. The read does not wait
   *  for the stream to open (it runs alongside the health read, or was started by early.ts):
   *  if it turns out older than the stream's start, the events between would be missing, so
   *  it is read again (rare: only when something changed between the two reads). */
  async load(kind: Kind): Promise<LiveList> {
    const early = this.early?.lists[kind];
    if (early) delete this.early!.lists[kind];
    let { items, revision } = early ? await early.catch(() => listAll<Resource>(KIND_PATH[kind])) : await listAll<Resource>(KIND_PATH[kind]);
    const from = await this.start;
    if (from !== undefined && revision < from) ({ items, revision } = await listAll<Resource>(KIND_PATH[kind]));
    let list: LiveList = { items: items as Resource[], revision };
    for (const e of this.buffer) {
      if (e.kind === kind && e.revision > revision) list = applyEvent(list, e);
    }
    return list;
  }
}
