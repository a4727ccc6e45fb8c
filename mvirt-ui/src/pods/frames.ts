// The pod exec WebSocket's frames (`GET /v1/pods/{id}/exec`, Kubernetes v4.channel.k8s.io
// style): every binary frame starts with its channel byte — 0 stdin (client → server), 1 stdout,
// 2 stderr, 3 status (server → client: JSON {"exit_code": n} or {"error": "..."}, then close),
// 4 resize (client → server: JSON {"cols": n, "rows": n}). An empty stdin frame ([0]) closes the
// process's stdin.

/** The WebSocket subprotocol the API offers for exec. */
export const EXEC_PROTOCOL = 'v4.channel.k8s.io';

export const STDIN = 0;
export const STDOUT = 1;
export const STDERR = 2;
export const STATUS = 3;
export const RESIZE = 4;

const enc = new TextEncoder();
const dec = new TextDecoder();

function frame(channel: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(payload.length + 1);
  out[0] = channel;
  out.set(payload, 1);
  return out;
}

/** Keys or bytes for the process's stdin (a string is sent as UTF-8). */
export function stdinFrame(data: string | Uint8Array): Uint8Array {
  return frame(STDIN, typeof data === 'string' ? enc.encode(data) : data);
}

/** Closes the process's stdin. */
export const stdinEof = (): Uint8Array => new Uint8Array([STDIN]);

/** The terminal's new size (tty sessions). */
export function resizeFrame(cols: number, rows: number): Uint8Array {
  if (!Number.isInteger(cols) || !Number.isInteger(rows) || cols < 1 || rows < 1 || cols > 65535 || rows > 65535)
    throw new RangeError(`a terminal size is two whole numbers 1–65535, not ${cols}x${rows}`);
  return frame(RESIZE, enc.encode(JSON.stringify({ cols, rows })));
}

export interface ExecStatus {
  exit_code?: number;
  error?: string;
}

export type ServerFrame =
  | { channel: typeof STDOUT; data: Uint8Array }
  | { channel: typeof STDERR; data: Uint8Array }
  | { channel: typeof STATUS; status: ExecStatus }
  | { channel: 'invalid'; reason: string };

/** Decodes one frame from the server. Never throws: a frame that breaks the protocol comes
 *  back as `invalid` with the reason, for the caller to show. */
export function decodeFrame(buf: ArrayBuffer | Uint8Array): ServerFrame {
  const bytes = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
  if (bytes.length === 0) return { channel: 'invalid', reason: 'an empty frame (no channel byte)' };
  const channel = bytes[0];
  const payload = bytes.subarray(1);
  if (channel === STDOUT) return { channel: STDOUT, data: payload };
  if (channel === STDERR) return { channel: STDERR, data: payload };
  if (channel === STATUS) {
    try {
      const v = JSON.parse(dec.decode(payload)) as unknown;
      if (v && typeof v === 'object') {
        const o = v as Record<string, unknown>;
        const status: ExecStatus = {};
        if (typeof o.exit_code === 'number') status.exit_code = o.exit_code;
        if (typeof o.error === 'string') status.error = o.error;
        if (status.exit_code !== undefined || status.error !== undefined) return { channel: STATUS, status };
      }
      return { channel: 'invalid', reason: `a status frame without exit_code or error: ${dec.decode(payload).slice(0, 200)}` };
    } catch {
      return { channel: 'invalid', reason: `a status frame that is not JSON: ${dec.decode(payload).slice(0, 200)}` };
    }
  }
  return { channel: 'invalid', reason: `a frame on channel ${channel} (the server sends only 1 stdout, 2 stderr, 3 status)` };
}

/** The exec WebSocket's URL. Browsers cannot put an Authorization header on a WebSocket: the
 *  token rides in `?access_token=`, as for the VM console. */
export function execUrl(
  podId: string,
  opts: { container: string; command: string[]; tty: boolean; token: string },
  loc: Pick<Location, 'protocol' | 'host'> = window.location,
): string {
  const scheme = loc.protocol === 'https:' ? 'wss' : 'ws';
  const q = new URLSearchParams();
  if (opts.container) q.set('container', opts.container);
  q.set('tty', String(opts.tty));
  for (const c of opts.command) q.append('command', c);
  q.set('access_token', opts.token);
  return `${scheme}://${loc.host}/v1/pods/${encodeURIComponent(podId)}/exec?${q.toString()}`;
}

/** Splits a command line into arguments like a shell would for the simple cases: whitespace
 *  separates, single quotes keep everything, double quotes keep everything but `\"` and `\\`,
 *  a backslash outside quotes escapes the next character. Throws on an unclosed quote. */
export function splitArgs(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inArg = false;
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = null;
      else cur += c;
    } else if (quote === '"') {
      if (c === '"') quote = null;
      else if (c === '\\' && (line[i + 1] === '"' || line[i + 1] === '\\')) cur += line[++i];
      else cur += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      inArg = true;
    } else if (c === '\\' && i + 1 < line.length) {
      cur += line[++i];
      inArg = true;
    } else if (/\s/.test(c)) {
      if (inArg) out.push(cur);
      cur = '';
      inArg = false;
    } else {
      cur += c;
      inArg = true;
    }
  }
  if (quote) throw new Error(`an unclosed ${quote} quote`);
  if (inArg) out.push(cur);
  return out;
}
