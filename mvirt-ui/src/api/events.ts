// The one live connection: GET /v1/events read with fetch (so it can carry the Authorization
// header, which EventSource cannot), parsed as Server-Sent Events. After a drop it reconnects
// with `Last-Event-ID: <last revision seen>`, and the API replays what was missed: no gap, no
// polling. `from` starts the stream at a revision (the one the first lists were read at).

export interface ApiEvent {
  revision: number;
  type: string;
  kind: string;
  id: string;
  project: string;
  object: Record<string, unknown> | null;
}

export interface SseMessage {
  id?: string;
  event?: string;
  data: string;
}

/** Incremental SSE parser (WHATWG rules for the fields the API sends). */
export class SseParser {
  private buf = '';
  private data: string[] = [];
  private id?: string;
  private event?: string;

  push(chunk: string): SseMessage[] {
    this.buf += chunk;
    const out: SseMessage[] = [];
    for (;;) {
      const nl = this.buf.search(/\r\n|\r|\n/);
      if (nl < 0) break;
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + (this.buf.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (this.data.length) out.push({ id: this.id, event: this.event, data: this.data.join('\n') });
        this.data = [];
        this.event = undefined;
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'id') this.id = value;
      else if (field === 'event') this.event = value;
    }
    return out;
  }
}

export type StreamState = 'connecting' | 'live' | 'reconnecting' | 'stopped';

export interface EventStreamOptions {
  token: string;
  from?: number;
  onEvent: (e: ApiEvent) => void;
  onState?: (s: StreamState, detail?: string) => void;
  /** Called when the API refuses the stream for good (401/403). */
  onFatal?: (status: number, message: string) => void;
  url?: string;
}

/** Opens the stream; returns a function that closes it. */
export function openEventStream(opts: EventStreamOptions): () => void {
  const ctrl = new AbortController();
  let last = opts.from;
  let delay = 250;
  const url = opts.url ?? '/v1/events';

  // A connection the network lost may look open for minutes (no TCP reset): when the browser
  // says it went offline, drop the attempt at once, and when it is back, reconnect at once.
  const hasWindow = typeof window !== 'undefined';
  const run = async () => {
    while (!ctrl.signal.aborted) {
      opts.onState?.(last === opts.from && delay === 250 ? 'connecting' : 'reconnecting');
      const attempt = new AbortController();
      const drop = () => attempt.abort();
      ctrl.signal.addEventListener('abort', drop);
      if (hasWindow) window.addEventListener('offline', drop);
      try {
        const headers: Record<string, string> = { Authorization: `Bearer ${opts.token}`, Accept: 'text/event-stream' };
        if (last !== undefined) headers['Last-Event-ID'] = String(last);
        const resp = await fetch(url, { headers, signal: attempt.signal, cache: 'no-store' });
        if (resp.status === 401 || resp.status === 403) {
          const text = await resp.text();
          let message = text;
          try {
            message = JSON.parse(text).error.message;
          } catch {
            /* plain text */
          }
          opts.onFatal?.(resp.status, message);
          opts.onState?.('stopped', message);
          return;
        }
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
        opts.onState?.('live');
        delay = 250;
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        const parser = new SseParser();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const msg of parser.push(value)) {
            let event: ApiEvent;
            try {
              event = JSON.parse(msg.data) as ApiEvent;
            } catch {
              continue;
            }
            if (msg.id) last = Number(msg.id);
            opts.onEvent(event);
          }
        }
      } catch (e) {
        if (ctrl.signal.aborted) return;
        opts.onState?.('reconnecting', (e as Error).message);
      } finally {
        ctrl.signal.removeEventListener('abort', drop);
        if (hasWindow) window.removeEventListener('offline', drop);
      }
      if (ctrl.signal.aborted) return;
      opts.onState?.('reconnecting');
      // Back off between reconnects (a dropped stream, a restarting member): 0.25 s → 5 s, cut
      // short when the browser comes back online.
      await new Promise<void>((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          if (hasWindow) window.removeEventListener('online', wake);
          resolve();
        };
        const timer = setTimeout(wake, delay);
        if (hasWindow) window.addEventListener('online', wake);
      });
      delay = Math.min(delay * 2, 5000);
    }
  };
  void run();
  return () => ctrl.abort();
}
