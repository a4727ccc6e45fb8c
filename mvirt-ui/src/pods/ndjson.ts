// Reading `GET /v1/pods/{id}/logs` (application/x-ndjson: one JSON object per line; with
// follow=true the response stays open and new lines keep coming).
import { ApiError, buildUrl, errorFrom, getSession } from '../api/client';
import type { PodLogEntry } from '../api/types';

/** Incremental NDJSON parser: feed it chunks of text, get the complete lines' objects. A line
 *  that is not JSON is handed to `onBad` (and skipped) rather than ending the stream. */
export class NdjsonParser<T = unknown> {
  private buf = '';
  constructor(private onBad: (line: string, err: Error) => void = () => undefined) {}

  push(chunk: string): T[] {
    this.buf += chunk;
    const out: T[] = [];
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).replace(/\r$/, '');
      this.buf = this.buf.slice(nl + 1);
      this.parse(line, out);
    }
    return out;
  }

  /** The end of the stream: a last line without a newline still counts. */
  end(): T[] {
    const out: T[] = [];
    const rest = this.buf.replace(/\r$/, '');
    this.buf = '';
    this.parse(rest, out);
    return out;
  }

  private parse(line: string, out: T[]) {
    if (!line.trim()) return;
    try {
      out.push(JSON.parse(line) as T);
    } catch (e) {
      this.onBad(line, e as Error);
    }
  }
}

export interface LogQuery {
  container?: string;
  follow: boolean;
  tail?: number;
}

export const logsPath = (podId: string, q: LogQuery) =>
  buildUrl(`/v1/pods/${encodeURIComponent(podId)}/logs`, { container: q.container, follow: q.follow, tail: q.tail });

export interface ReadLogsOptions {
  /** Each chunk's complete lines, in order. */
  onEntries: (entries: PodLogEntry[]) => void;
  /** The API accepted the request (the headers arrived); lines may follow. */
  onOpen?: () => void;
  /** A line that is not JSON (skipped). */
  onBad?: (line: string) => void;
  signal?: AbortSignal;
}

/** Streams a pod's log. Resolves when the API ends the response (without follow: after the
 *  last line); rejects with the API's error (ApiError) when it refuses, or when the connection
 *  breaks. Abort with `signal`. */
export async function readLogs(podId: string, q: LogQuery, o: ReadLogsOptions): Promise<void> {
  const headers: Record<string, string> = { Accept: 'application/x-ndjson' };
  const token = getSession()?.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  let resp: Response;
  try {
    resp = await fetch(logsPath(podId, q), { headers, signal: o.signal });
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e;
    throw new ApiError(0, 'network', `cannot reach the API: ${(e as Error).message}`);
  }
  if (!resp.ok) throw errorFrom(resp.status, await resp.text());
  if (!resp.body) throw new ApiError(resp.status, 'no_body', 'the log response has no body');
  o.onOpen?.();
  const parser = new NdjsonParser<PodLogEntry>((line) => o.onBad?.(line));
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const entries = parser.push(value);
    if (entries.length) o.onEntries(entries);
  }
  const last = parser.end();
  if (last.length) o.onEntries(last);
}
