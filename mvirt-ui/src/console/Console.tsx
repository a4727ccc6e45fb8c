// The VM's serial console in the browser: xterm.js over the API's console WebSocket
// (GET /v1/vms/{id}/console). Browsers cannot put an Authorization header on a WebSocket, so the
// token rides in `?access_token=`, which the API accepts for this path only and strips before
// the handler. Output arrives as binary frames (the vmm's scrollback first); keys go back as
// binary frames.
import { useEffect, useRef, useState } from 'react';
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { getSession } from '../api/client';

export function consoleUrl(vmId: string, token: string, loc: Location = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${loc.host}/v1/vms/${encodeURIComponent(vmId)}/console?access_token=${encodeURIComponent(token)}`;
}

export default function Console({ vmId }: { vmId: string }) {
  const box = useRef<HTMLDivElement>(null);
  const [state, setState] = useState('connecting');
  useEffect(() => {
    const token = getSession()?.token;
    if (!box.current || !token) return;
    const dark = document.documentElement.classList.contains('dark');
    const term = new Terminal({
      convertEol: false,
      cursorBlink: true,
      fontSize: 14,
      scrollback: 5000,
      theme: dark ? { background: '#000000', foreground: '#e5e7eb' } : { background: '#111827', foreground: '#f9fafb' },
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(box.current);
    fit.fit();
    term.focus();
    const ws = new WebSocket(consoleUrl(vmId, token));
    ws.binaryType = 'arraybuffer';
    const enc = new TextEncoder();
    ws.onopen = () => setState('connected');
    ws.onmessage = (m) => {
      if (typeof m.data === 'string') term.write(m.data);
      else term.write(new Uint8Array(m.data as ArrayBuffer));
    };
    ws.onclose = (e) => setState(e.reason ? `closed: ${e.reason}` : 'closed');
    ws.onerror = () => setState('error: the console WebSocket failed (is the VM placed and its node reachable?)');
    const input = term.onData((d) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
    });
    const onResize = () => fit.fit();
    window.addEventListener('resize', onResize);
    return () => {
      window.removeEventListener('resize', onResize);
      input.dispose();
      ws.close();
      term.dispose();
    };
  }, [vmId]);
  return (
    <div>
      <p className="mb-2 text-xs text-muted" data-testid="console-state" aria-live="polite">
        {state}
      </p>
      <div ref={box} className="h-96 w-full overflow-hidden rounded-md bg-black p-1" data-testid="console" aria-label="Serial console" role="region" />
    </div>
  );
}
