// A command in a pod's container, in the browser: xterm.js over the API's exec WebSocket
// (GET /v1/pods/{id}/exec), with the channel-prefixed frames of ./frames.ts. Loaded on demand
// (it brings xterm.js).
import { useEffect, useRef, useState } from 'react';
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { getSession } from '../api/client';
import { Button } from '../components/ui';
import { decodeFrame, EXEC_PROTOCOL, execUrl, resizeFrame, stdinEof, stdinFrame, STATUS, STDERR, STDOUT } from './frames';

export default function ExecTerminal({ podId, container, command, tty }: { podId: string; container: string; command: string[]; tty: boolean }) {
  const box = useRef<HTMLDivElement>(null);
  const sock = useRef<WebSocket | null>(null);
  const [state, setState] = useState('connecting');
  useEffect(() => {
    const token = getSession()?.token;
    if (!box.current || !token) return;
    const dark = document.documentElement.classList.contains('dark');
    const term = new Terminal({
      // Without a tty the process writes bare "\n": the terminal adds the carriage return.
      convertEol: !tty,
      cursorBlink: tty,
      fontSize: 14,
      scrollback: 5000,
      theme: dark ? { background: '#000000', foreground: '#e5e7eb' } : { background: '#111827', foreground: '#f9fafb' },
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box.current);
    fit.fit();
    term.focus();
    const ws = new WebSocket(execUrl(podId, { container, command, tty, token }), [EXEC_PROTOCOL]);
    sock.current = ws;
    ws.binaryType = 'arraybuffer';
    let ended: string | null = null;
    const send = (b: Uint8Array) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(b);
    };
    ws.onopen = () => {
      setState('connected');
      if (tty) send(resizeFrame(term.cols, term.rows));
    };
    ws.onmessage = (m) => {
      if (typeof m.data === 'string') return; // the protocol is binary only
      const f = decodeFrame(m.data as ArrayBuffer);
      if (f.channel === STDOUT || f.channel === STDERR) {
        if (tty || f.channel === STDOUT) term.write(f.data);
        else {
          term.write('\x1b[31m');
          term.write(f.data);
          term.write('\x1b[0m');
        }
      } else if (f.channel === STATUS) {
        ended = f.status.error !== undefined ? `failed: ${f.status.error}` : `exited with code ${f.status.exit_code}`;
        setState(ended);
      } else {
        ended = `protocol error: ${f.reason}`;
        setState(ended);
        ws.close();
      }
    };
    ws.onclose = (e) => {
      if (!ended) setState(e.reason ? `closed: ${e.reason}` : 'closed without an exit status (is the pod running on a node?)');
    };
    ws.onerror = () => {
      if (!ended) ended = 'error: the exec WebSocket failed (is the pod running on a node, and the container started?)';
      setState(ended);
    };
    const input = term.onData((d) => send(stdinFrame(d)));
    const resized = term.onResize(({ cols, rows }) => {
      if (tty) send(resizeFrame(cols, rows));
    });
    const onResize = () => fit.fit();
    window.addEventListener('resize', onResize);
    return () => {
      window.removeEventListener('resize', onResize);
      input.dispose();
      resized.dispose();
      ws.close();
      sock.current = null;
      term.dispose();
    };
  }, [podId, container, command, tty]);
  return (
    <div>
      <div className="mb-2 flex items-center gap-3">
        <p className="text-xs text-muted" data-testid="exec-state" aria-live="polite">
          {state}
        </p>
        {!tty && state === 'connected' && (
          <Button onClick={() => sock.current?.readyState === WebSocket.OPEN && sock.current.send(stdinEof())}>Close stdin (EOF)</Button>
        )}
      </div>
      <div
        ref={box}
        className="h-80 w-full overflow-hidden rounded-md bg-black p-1"
        data-testid="exec-terminal"
        aria-label={`Terminal: ${command.join(' ')}`}
        role="region"
      />
    </div>
  );
}
