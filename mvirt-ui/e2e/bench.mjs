// The dashboard's benchmark (README, not CI), in the same headless Chromium as the e2e test:
//  1. first-load JS: the gzipped size of every script index.html loads at once (entry and
//     modulepreloads; pages and xterm.js load on demand and are not counted);
//  2. the VM list with N VMs (default 1,000; plus any that exist): time from navigation until the
//     list counts them all and its first screen of rows is in the DOM (the list is windowed) —
//     MVIRT_BENCH_COLD (default 3) cold first loads, each in a new browser with a fresh profile,
//     then two warm loads;
//  3. event → DOM: a VM is created through REST; the time from the API's answer until its row
//     is in the DOM (newest first, so at the top of the list) (so it includes the commit, the SSE hop and React's render), 100 times.
// Against any mvirt-api serving the UI (VMs are created with a node selector that matches no
// node, so they stay pending and no node is needed):
//   MVIRT_UI_URL=http://127.0.0.1:8080 MVIRT_TOKEN=... node e2e/bench.mjs
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import os from 'node:os';
import path from 'node:path';

const BASE = process.env.MVIRT_UI_URL ?? 'http://127.0.0.1:8080';
const TOKEN = process.env.MVIRT_TOKEN;
const N = Number(process.env.MVIRT_BENCH_VMS ?? 1000);
const ROUNDS = Number(process.env.MVIRT_BENCH_EVENTS ?? 100);
if (!TOKEN) throw new Error('MVIRT_TOKEN is not set');
const dist = path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'dist');
const tag = Date.now().toString(36).slice(-5);

async function rest(method, p, body) {
  const resp = await fetch(new URL(p, BASE), {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!resp.ok) throw new Error(`${method} ${p}: ${resp.status} ${await resp.text()}`);
  const text = await resp.text();
  return text ? JSON.parse(text) : undefined;
}
const vmBody = (name) => ({ name, labels: { bench: tag }, spec: { vcpus: 1, memory_bytes: 64 << 20, node_selector: 'mvirt-bench=nowhere' } });
const pct = (xs, p) => xs.slice().sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];

// 1. First-load JS (the scripts index.html loads at once).
const html = readFileSync(path.join(dist, 'index.html'), 'utf8');
const scripts = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+\.js)"/g)].map((m) => m[1]);
let gz = 0;
for (const s of scripts) gz += gzipSync(readFileSync(path.join(dist, s))).length;
console.log(`first-load JS: ${scripts.length} files, ${(gz / 1024).toFixed(1)} KiB gzipped`);

// 2. N VMs.
let existing = 0;
for (let token = ''; ;) {
  const p = await rest('GET', `/v1/vms?limit=1000${token ? `&page_token=${token}` : ''}`);
  existing += p.items.length;
  if (!p.next_page_token) break;
  token = p.next_page_token;
}
console.log(`creating ${N} VMs (${existing} exist)…`);
const names = Array.from({ length: N }, (_, i) => `bench-${tag}-${i}`);
for (let i = 0; i < names.length; i += 32) await Promise.all(names.slice(i, i + 32).map((n) => rest('POST', '/v1/vms', vmBody(n))));

const launch = (dir) =>
  chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    viewport: { width: 1400, height: 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
const profiles = [];
process.on('exit', () => profiles.forEach((p) => rmSync(p, { recursive: true, force: true })));
const fresh = () => {
  const p = mkdtempSync(path.join(os.tmpdir(), 'mvirt-ui-bench-'));
  profiles.push(p);
  return p;
};
const expected = existing + N;

/** Navigates to /vms and returns when the list counts every VM and its first screen of rows is in the DOM. */
async function loadList(page) {
  await page.goto(`${BASE}/vms`);
  await page.waitForFunction(
    (n) =>
      parseInt(document.querySelector('[data-testid=vms-shown]')?.textContent ?? '0', 10) >= n &&
      document.querySelectorAll('[data-testid=vm-row]').length >= 20,
    expected,
    { polling: 'raf', timeout: 60_000 },
  );
  return page.evaluate(() => {
    const list = performance.getEntriesByType('resource').filter((e) => e.name.includes('/v1/vms?'));
    const nav = performance.getEntriesByType('navigation')[0];
    return {
      rows: performance.now(),
      script: nav.domContentLoadedEventEnd,
      listDone: Math.max(...list.map((e) => e.responseEnd)),
      listStart: Math.min(...list.map((e) => e.startTime)),
    };
  });
}
const show = (kind, r) =>
  console.log(
    `${kind}: list of ${expected} VMs in the DOM ${r.rows.toFixed(0)} ms after navigation (app started ${r.script.toFixed(0)} ms, list request ${r.listStart.toFixed(0)}–${r.listDone.toFixed(0)} ms, render ${(r.rows - r.listDone).toFixed(0)} ms)`,
  );

// Cold first loads: each in a new browser with a fresh profile (no HTTP cache, no code cache).
const COLD = Number(process.env.MVIRT_BENCH_COLD ?? 3);
const cold = [];
for (let i = 0; i < COLD; i++) {
  const ctx = await launch(fresh());
  try {
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    await page.addInitScript((t) => sessionStorage.setItem('mvirt.token', t), TOKEN);
    const r = await loadList(page);
    cold.push(r.rows);
    show('cold', r);
  } finally {
    await ctx.close();
  }
}
if (cold.length) console.log(`cold first load: median ${pct(cold, 50).toFixed(0)} ms, max ${Math.max(...cold).toFixed(0)} ms over ${cold.length}`);

const context = await launch(fresh());
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await page.addInitScript((t) => sessionStorage.setItem('mvirt.token', t), TOKEN);
  // Warm: the same browser loads the page again (scripts cached).
  await loadList(page);
  for (let round = 0; round < 2; round++) show('warm', await loadList(page));

  // 3. Event → DOM.
  await page.evaluate(() => {
    window.__seen = new Map();
    new MutationObserver((records) => {
      const now = performance.timeOrigin + performance.now();
      for (const r of records)
        for (const n of r.addedNodes)
          if (n.nodeType === 1 && n.dataset?.testid === 'vm-row' && !window.__seen.has(n.dataset.name)) window.__seen.set(n.dataset.name, now);
    }).observe(document.querySelector('tbody'), { childList: true });
  });
  const latencies = [];
  for (let i = 0; i < ROUNDS; i++) {
    const name = `ev-${tag}-${i}`;
    await rest('POST', '/v1/vms', vmBody(name));
    const answered = Date.now();
    await page.waitForFunction((n) => window.__seen.has(n), name, { polling: 'raf' });
    latencies.push((await page.evaluate((n) => window.__seen.get(n), name)) - answered);
    names.push(name);
  }
  console.log(
    `event → DOM over ${ROUNDS} creates: p50 ${pct(latencies, 50).toFixed(1)} ms, p95 ${pct(latencies, 95).toFixed(1)} ms, max ${Math.max(...latencies).toFixed(1)} ms`,
  );
} finally {
  await context.close();
  if (!process.env.MVIRT_BENCH_KEEP) {
    console.log('deleting the bench VMs…');
    for (let i = 0; i < names.length; i += 32) await Promise.all(names.slice(i, i + 32).map((n) => rest('DELETE', `/v1/vms/${n}`).catch(() => undefined)));
  }
}
