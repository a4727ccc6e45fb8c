// End to end in a real headless Chromium against a real mvirt-api (and a node that runs QEMU
// guests), started by mvirt-node/tests/ui_e2e.rs. Also usable by hand against `scripts/up.sh`:
//   MVIRT_UI_URL=http://127.0.0.1:8080 MVIRT_TOKEN=$(cat /var/lib/mvirt-dev/api/admin.token) \
//   MVIRT_TEMPLATE=tiny MVIRT_CLI=../target/debug/mvirt node e2e/run.mjs
// (MVIRT_CA_FINGERPRINT=sha256:… too when the API serves https).
// Steps: the checked-in API types match the live spec; log in (a bad token shows the API's
// message); create a network and a VM in the UI and see the VM reach running without a reload;
// its usage charts show the guest's CPU and memory; its console shows the guest's output and
// answers a typed command; a bad input shows the API's message; a VM created meanwhile with the
// real `mvirt` CLI (MVIRT_CLI) appears live; the node's page charts the host and lists the VM;
// the template's import per node; pods (list, create, detail, log, exec, live, delete; pending: no node runs
// them here); a viewer sees no button the API would refuse it; delete. axe-core runs on every
// page (no critical or serious violation) and every page is screenshotted into MVIRT_SHOTS.
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fetchSpec, SCHEMA_FILE, typesFor } from '../scripts/openapi-types.mjs';

const BASE = must('MVIRT_UI_URL');
const TOKEN = must('MVIRT_TOKEN');
const TEMPLATE = process.env.MVIRT_TEMPLATE ?? 'tiny';
const SHOTS = process.env.MVIRT_SHOTS ?? path.join(path.dirname(new URL(import.meta.url).pathname), 'out');
const BOOT_MS = Number(process.env.MVIRT_BOOT_TIMEOUT_MS ?? 180_000);
const SUFFIX = Date.now().toString(36).slice(-5);
const NET = `ui-net-${SUFFIX}`;
const VM = `ui-vm-${SUFFIX}`;
const CLI_VM = `cli-vm-${SUFFIX}`;
// The real `mvirt` CLI (ui_e2e.rs passes this checkout's binary) and the fingerprint of the
// cluster's CA that `mvirt login --accept-fingerprint` pins (unset for a plaintext API).
const CLI = must('MVIRT_CLI');
const CA_FINGERPRINT = process.env.MVIRT_CA_FINGERPRINT;
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

function must(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`e2e: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

const t0 = Date.now();
const log = (msg) => console.log(`[e2e ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);

async function rest(method, p, body) {
  const resp = await fetch(new URL(p, BASE), {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : undefined };
}

// The CLI as an operator runs it: a config of its own (written by `mvirt login`), none of the
// MVIRT_* variables of this script (MVIRT_TOKEN would override the remote's token).
const cliHome = mkdtempSync(path.join(os.tmpdir(), 'mvirt-ui-e2e-cli-'));
function cli(args) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MVIRT_')));
  env.MVIRT_CONFIG = path.join(cliHome, 'config.toml');
  return new Promise((resolve, reject) => {
    execFile(CLI, args, { env, timeout: 60_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`mvirt ${args.join(' ')} failed (${err.code ?? err.signal}): ${stderr}${stdout}`));
      else resolve({ stdout, stderr });
    });
  });
}

// 1. The UI's generated API types must match the live spec (a difference fails the run at the
// end, after the browser steps, so one run reports everything).
const failures = [];
{
  const live = await typesFor(await fetchSpec(BASE, TOKEN));
  const checkedIn = readFileSync(SCHEMA_FILE, 'utf8');
  if (live !== checkedIn && process.env.MVIRT_UI_UPDATE_TYPES === '1') {
    // Like a snapshot test's update mode: rewrite the file from the live spec (then commit it).
    writeFileSync(SCHEMA_FILE, live);
    log(`MVIRT_UI_UPDATE_TYPES=1: rewrote ${SCHEMA_FILE} from the live spec`);
  } else if (live !== checkedIn) {
    const a = checkedIn.split('\n');
    const b = live.split('\n');
    const i = a.findIndex((line, n) => line !== b[n]);
    failures.push(
      `src/api/schema.d.ts drifted from the live /v1/openapi.json (first difference at line ${i + 1}:\n  checked in: ${a[i]}\n  live:       ${b[i]})\n` +
        'regenerate it (MVIRT_UI_UPDATE_TYPES=1 cargo test -p mvirt-node --test ui_e2e, or `npm run gen:api` in mvirt-ui/ against a running API) and commit it',
    );
    log('API types DIFFER from the live spec (reported at the end)');
  } else {
    log('API types match the live spec');
  }
}

mkdirSync(SHOTS, { recursive: true });
const profile = mkdtempSync(path.join(os.tmpdir(), 'mvirt-ui-e2e-'));
process.on('exit', () => rmSync(profile, { recursive: true, force: true }));
// A fresh profile directory (Playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  viewport: { width: 1400, height: 900 },
  // The UI's CSP allows no inline script; axe-core is injected as one, so the test lifts it.
  bypassCSP: true,
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
const pageErrors = [];
let page;
try {
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (e) => pageErrors.push(String(e)));

  const axeViolations = [];
  async function check(name) {
    await page.waitForLoadState('networkidle').catch(() => undefined);
    await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
    await page.addScriptTag({ content: axeSource });
    const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ['violations'] }));
    const bad = result.violations.filter((v) => v.impact === 'critical' || v.impact === 'serious');
    for (const v of bad)
      axeViolations.push(
        `${name}: ${v.id} (${v.impact}) ${v.help} — ${v.nodes
          .map((n) => n.target.join(' '))
          .slice(0, 3)
          .join(', ')}`,
      );
    log(`page ${name}: screenshot, axe ${bad.length ? bad.length + ' serious/critical' : 'clean'}`);
  }
  const nav = async (label) => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: label, exact: true }).click();
  };

  // 2. Login: a bad token shows the API's message; the admin token gets in.
  await page.goto(BASE);
  await page.getByLabel('API token').waitFor();
  await check('login');
  await page.getByLabel('API token').fill('not-a-token');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('alert').filter({ hasText: 'unknown or revoked token' }).waitFor();
  log('a bad token shows the API message');
  await page.getByLabel('API token').fill(TOKEN);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
  await page.getByTestId('stream-state').filter({ hasText: 'live' }).waitFor();
  await page.getByTestId('leader').filter({ hasText: 'member' }).waitFor();
  await check('dashboard');

  // 3. A network, created in the UI; then the same name again: the API's 409 message is shown.
  await nav('Networks');
  await page.getByRole('button', { name: 'Create network' }).click();
  let form = page.getByRole('form', { name: 'Create network' });
  await form.getByLabel('Name').fill('Bad Name');
  await form.getByRole('button', { name: 'Create' }).click();
  await form.getByText('lowercase letters').waitFor();
  await form.getByLabel('Name').fill(NET);
  await form.getByLabel('IPv4 prefix').fill('10.88.0.0/24');
  await form.getByRole('button', { name: 'Create' }).click();
  await page.locator(`[data-testid="network-row"][data-name="${NET}"]`).waitFor();
  log(`network ${NET} created in the UI`);
  await page.getByRole('button', { name: 'Create network' }).click();
  form = page.getByRole('form', { name: 'Create network' });
  await form.getByLabel('Name').fill(NET);
  await form.getByLabel('IPv4 prefix').fill('10.89.0.0/24');
  await form.getByRole('button', { name: 'Create' }).click();
  const dup = await rest('POST', '/v1/networks', { name: NET, spec: { ipv4_prefix: '10.89.0.0/24' } });
  if (dup.status !== 409) throw new Error(`expected 409 for a duplicate network, got ${dup.status}`);
  await form.getByRole('alert').filter({ hasText: dup.body.error.message }).waitFor();
  log(`a duplicate name shows the API's message: "${dup.body.error.message}"`);
  await check('networks-create-error');
  await page.getByRole('button', { name: 'Close' }).click();
  await check('networks');

  // 4. A VM created in the UI reaches running without a reload.
  await nav('VMs');
  await page.getByRole('button', { name: 'Create VM' }).click();
  form = page.getByRole('form', { name: 'Create VM' });
  await form.getByLabel('Name', { exact: true }).fill(VM);
  await form.getByLabel('Template (root disk)').selectOption({ label: TEMPLATE });
  await form.getByLabel('Root disk (MiB)').fill('64');
  await form.getByLabel('Memory (MiB)').fill('256');
  await form.getByLabel(NET).check();
  await form.getByLabel('User data (cloud-init)').fill('#cloud-config\nmvirt-ui-e2e: hello\n');
  await check('vm-create');
  const created = Date.now();
  await form.getByRole('button', { name: 'Create' }).click();
  await page.getByRole('heading', { name: VM }).waitFor();
  await page.getByTestId('detail-phase').filter({ hasText: 'running' }).waitFor({ timeout: BOOT_MS });
  log(`VM ${VM} shown running ${((Date.now() - created) / 1000).toFixed(1)}s after create, no reload`);

  // 4b. Its usage: the page samples /v1/vms/{id}/stats from the node; the guest boots under
  // TCG, so its hypervisor's CPU share is well above zero.
  const cpuNow = page.getByTestId('usage-cpu-now');
  await waitFor('a CPU value above 0 on the VM page', 30_000, async () => parseFloat(await cpuNow.innerText()) > 0);
  await waitFor('the memory chart', 10_000, async () => /MiB|GiB/.test(await page.getByTestId('usage-memory-now').innerText()));
  log(`the VM page charts its usage: CPU ${await cpuNow.innerText()}, memory ${await page.getByTestId('usage-memory-now').innerText()}`);
  await check('vm-detail-usage');

  // 5. Its console: the guest's boot output, then a typed command and its answer.
  await page.getByRole('button', { name: 'Console', exact: true }).click();
  const term = page.getByTestId('console');
  await page.getByTestId('console-state').filter({ hasText: 'connected' }).waitFor();
  const screenText = () => term.locator('.xterm-rows').innerText();
  await waitFor('the guest to finish booting on the console', BOOT_MS, async () => (await screenText()).includes('MVIRT-GUEST-BOOTED'));
  await waitFor('the guest shell', 60_000, async () => (await screenText()).includes('built-in shell'));
  log('console shows the guest booted');
  await term.click();
  await page.keyboard.type('echo UI-$((6*7))\n', { delay: 20 });
  await waitFor('the answer to the typed command', 60_000, async () => (await screenText()).includes('UI-42'));
  log('a command typed in the browser console was answered');
  await check('vm-detail-console');

  // 5b. Power actions from the VM's page: stop, then start; the phase follows the node's reports.
  await page.getByRole('button', { name: 'Close console' }).click();
  let t = Date.now();
  await page.getByRole('button', { name: 'Stop', exact: true }).click();
  await page.getByTestId('detail-phase').filter({ hasText: 'stopped' }).waitFor({ timeout: 60_000 });
  const stopMs = Date.now() - t;
  t = Date.now();
  await page.getByRole('button', { name: 'Start', exact: true }).click();
  await page.getByTestId('detail-phase').filter({ hasText: 'running' }).waitFor({ timeout: 60_000 });
  log(`stopped (${stopMs} ms) and started again (${Date.now() - t} ms) from its page`);

  // 5c. The trace of its last change (the start just made here): the page's link opens the
  // audit log filtered by that request's id, and every entry shown carries it.
  await page.getByRole('link', { name: 'Trace of the last change' }).click();
  await page.waitForURL(/\/audit\?trace_id=/);
  const traceId = new URL(page.url()).searchParams.get('trace_id') ?? '';
  const logRows = page.getByRole('table', { name: 'Log entries' }).getByRole('row');
  await logRows.nth(1).waitFor();
  const traced = (await logRows.evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.innerText.trim())))).filter(
    (cells) => cells.length >= 6,
  );
  if (!traceId || !traced.length || traced.some((cells) => cells[5] !== traceId.slice(-8)))
    throw new Error(`the trace link of ${VM} (request ${traceId}) shows other entries: ${JSON.stringify(traced)}`);
  log(`the VM's trace link shows ${traced.length} entries of request ${traceId} (${[...new Set(traced.map((c) => c[2]))].join(', ')})`);
  await check('audit-trace');
  await page.goBack();
  await page.getByRole('heading', { name: VM }).waitFor();

  // 6. A VM created meanwhile with the CLI appears in the list live (no reload): this
  // checkout's `mvirt`, logged in non-interactively (`mvirt login --accept-fingerprint`, the
  // token from a 0600 file, so the CA is pinned only if it is the cluster's), then `mvirt vm create`.
  await nav('VMs');
  await page.locator(`[data-testid="vm-row"][data-name="${VM}"]`).waitFor();
  writeFileSync(path.join(cliHome, 'token'), TOKEN, { mode: 0o600 });
  const loginArgs = ['login', BASE, '--name', 'e2e', '--token-file', path.join(cliHome, 'token')];
  if (BASE.startsWith('https://')) {
    if (!CA_FINGERPRINT) throw new Error('MVIRT_CA_FINGERPRINT is not set for an https:// API');
    loginArgs.push('--accept-fingerprint', CA_FINGERPRINT);
  }
  await cli(loginArgs);
  const cliStart = Date.now();
  const cliCreated = await cli(['-o', 'json', 'vm', 'create', CLI_VM, '--cpus', '1', '--memory', '64M', '--node-selector', 'mvirt-ui-e2e=nowhere']);
  const cliVm = { body: JSON.parse(cliCreated.stdout) };
  if (cliVm.body?.name !== CLI_VM || !cliVm.body?.id) throw new Error(`mvirt vm create printed ${cliCreated.stdout}`);
  await page.locator(`[data-testid="vm-row"][data-name="${CLI_VM}"]`).waitFor({ timeout: 10_000 });
  log(`a VM created with the mvirt CLI appeared in ${Date.now() - cliStart} ms (after the CLI returned)`);
  await check('vms');

  // 6b. The stream drops (the browser goes offline); a VM is created meanwhile; back online the
  // stream resumes with Last-Event-ID and the missed VM appears without a reload.
  const MISSED = `missed-vm-${SUFFIX}`;
  await page.context().setOffline(true);
  await page.getByTestId('stream-state').filter({ hasNotText: 'live' }).waitFor();
  const missed = await rest('POST', '/v1/vms', { name: MISSED, spec: { vcpus: 1, memory_bytes: 64 << 20, node_selector: 'mvirt-ui-e2e=nowhere' } });
  if (missed.status !== 201 && missed.status !== 200) throw new Error(`REST create: ${missed.status} ${JSON.stringify(missed.body)}`);
  await page.waitForTimeout(500);
  if (await page.locator(`[data-testid="vm-row"][data-name="${MISSED}"]`).count()) throw new Error('a VM appeared while the browser was offline');
  await page.context().setOffline(false);
  await page.locator(`[data-testid="vm-row"][data-name="${MISSED}"]`).waitFor({ timeout: 15_000 });
  await page.getByTestId('stream-state').filter({ hasText: 'live' }).waitFor();
  log('after a dropped stream the missed VM appeared (resumed with Last-Event-ID)');

  // 6c. The VM's root volume: a snapshot and a resize from the volume's panel, both seen live.
  await nav('Volumes');
  const ROOT = `${VM}-root`;
  const volRow = page.locator(`[data-testid="volume-row"][data-name="${ROOT}"]`);
  await volRow.getByRole('button', { name: 'Details' }).click();
  const snapForm = page.getByRole('form', { name: `Snapshot ${ROOT}` });
  await snapForm.getByLabel('Snapshot name').fill('ui-snap');
  await snapForm.getByRole('button', { name: 'Take snapshot' }).click();
  await page
    .getByRole('table', { name: `Snapshots of ${ROOT}` })
    .getByRole('cell', { name: 'ui-snap', exact: true })
    .waitFor();
  const resizeForm = page.getByRole('form', { name: `Resize ${ROOT}` });
  await resizeForm.getByLabel('New size (MiB)').fill('32');
  await resizeForm.getByRole('button', { name: 'Resize' }).click();
  await resizeForm.getByText('volumes only grow').waitFor();
  await resizeForm.getByLabel('New size (MiB)').fill('96');
  await resizeForm.getByRole('button', { name: 'Resize' }).click();
  await volRow.getByRole('cell', { name: '96 MiB', exact: true }).waitFor();
  log('a snapshot and a resize of the root volume, shown live');

  // 7. Every other page, screenshotted and checked by axe.
  for (const [label, name] of [
    ['NICs', 'nics'],
    ['Security groups', 'security-groups'],
    ['Volumes', 'volumes'],
    ['Templates', 'templates'],
    ['Nodes', 'nodes'],
    ['Projects', 'projects'],
    ['Tokens', 'tokens'],
    ['Control plane', 'controlplane'],
    ['Audit log', 'audit'],
  ]) {
    await nav(label);
    await page.getByRole('heading', { level: 1 }).first().waitFor();
    // The audit log is read from mvirt-log on demand: wait for its first entries (this run made many).
    if (name === 'audit') await page.getByRole('table', { name: 'Log entries' }).getByRole('row').nth(1).waitFor();
    await check(name);
  }
  // A security group with the rule editor: created with the SSH rule, a rule added, one removed.
  const SG = `ui-sg-${SUFFIX}`;
  await nav('Security groups');
  await page.getByRole('button', { name: 'Create security group' }).click();
  form = page.getByRole('form', { name: 'Create security group' });
  await form.getByLabel('Name').fill(SG);
  await form.getByRole('button', { name: 'Create' }).click();
  const sgRow = page.locator(`[data-testid="security_group-row"][data-name="${SG}"]`);
  await sgRow.getByRole('button', { name: 'Details' }).click();
  const rules = page.getByRole('table', { name: `Rules of ${SG}` });
  await rules.getByRole('cell', { name: 'ssh', exact: true }).waitFor();
  const ruleForm = page.getByRole('form', { name: `Add a rule to ${SG}` });
  await ruleForm.getByLabel('First port').fill('8080');
  await ruleForm.getByLabel('Last port').fill('80');
  await ruleForm.getByRole('button', { name: 'Add rule' }).click();
  await ruleForm.getByText('must not be below the first port').waitFor();
  await ruleForm.getByLabel('Last port').fill('8090');
  await ruleForm.getByLabel('Description').fill('web');
  await ruleForm.getByRole('button', { name: 'Add rule' }).click();
  await rules.getByRole('cell', { name: '8080–8090' }).waitFor();
  await rules.getByRole('row').filter({ hasText: 'ssh' }).getByRole('button', { name: 'Remove' }).click();
  await rules.getByRole('cell', { name: 'ssh', exact: true }).waitFor({ state: 'detached' });
  log('a security group: rule added (after the form refused a bad range) and removed, live');
  await sgRow.getByRole('button', { name: 'Delete' }).click();
  await sgRow.getByRole('button', { name: 'Yes, delete' }).click();
  await sgRow.waitFor({ state: 'detached' });

  // Cordon and uncordon the node.
  await nav('Nodes');
  const nodeRow = page.locator('[data-testid="node-row"]').first();
  await nodeRow.getByRole('button', { name: 'Cordon' }).click();
  await nodeRow.getByRole('cell', { name: 'cordoned' }).waitFor();
  await nodeRow.getByRole('button', { name: 'Uncordon' }).click();
  await nodeRow.getByRole('cell', { name: 'yes', exact: true }).waitFor();
  log('the node was cordoned and uncordoned');

  // The node's page: the host's usage and the VM on it, from /v1/nodes/{id}/stats.
  await nodeRow.getByRole('link').first().click();
  await page.getByTestId('node-detail-state').filter({ hasText: 'online' }).waitFor();
  await waitFor('a host CPU value on the node page', 30_000, async () => parseFloat(await page.getByTestId('usage-host-cpu-now').innerText()) > 0);
  await page.locator(`[data-testid="node-guest-row"][data-name="${VM}"]`).waitFor({ timeout: 15_000 });
  log(`the node page charts the host (CPU ${await page.getByTestId('usage-host-cpu-now').innerText()}) and lists ${VM}`);
  await check('node-detail');

  // The template's import on each node (the panel), ready here.
  await nav('Templates');
  const tplRow = page.locator(`[data-testid="template-row"][data-name="${TEMPLATE}"]`);
  await tplRow.getByRole('button', { name: 'Details' }).click();
  await page.locator('[data-testid="template-node-row"]').filter({ hasText: 'ready' }).first().waitFor();
  if (await tplRow.getByRole('button', { name: 'Cancel import' }).count()) throw new Error('an imported template offers Cancel import');
  await check('templates-per-node');

  // The audit log follows: an entry for a project created now through REST arrives in the table.
  await nav('Audit log');
  await page.getByRole('checkbox', { name: 'Follow' }).check();
  await page.waitForTimeout(500);
  const project = await rest('POST', '/v1/projects', { name: `ui-proj-${SUFFIX}` });
  if (project.status !== 201 && project.status !== 200) throw new Error(`REST project create: ${project.status}`);
  await page
    .getByRole('table', { name: 'Log entries' })
    .getByRole('cell', { name: project.body.id.slice(-8) })
    .first()
    .waitFor({ timeout: 15_000 });
  await rest('DELETE', `/v1/projects/${project.body.id}`);
  log('the audit log followed a new entry');

  // The other theme passes axe too.
  await nav('Dashboard');
  await page.getByRole('button', { name: /Switch to (dark|light) theme/ }).click();
  await check('dashboard-other-theme');

  // 7b. Pods, against the real API without a node that could run them (a node selector that
  // matches no node keeps them pending; the microVM path is tested in mvirt-vmm/mvirt-node):
  // the form refuses bad input first, a pod with two containers, a network and registry
  // credentials is created in the UI, its page shows why it is not placed, its containers not
  // reported yet, the credentials without their secret, and the API's answer to its log and
  // exec; a pod created through REST appears in the list live; both are deleted.
  const POD = `ui-pod-${SUFFIX}`;
  const REST_POD = `rest-pod-${SUFFIX}`;
  const SECRET = `pw-${SUFFIX}-never-shown`;
  await nav('Pods');
  await page.getByRole('heading', { name: 'Pods' }).waitFor();
  await page.getByRole('button', { name: 'Create pod' }).click();
  form = page.getByRole('form', { name: 'Create pod' });
  await form.getByLabel('Name', { exact: true }).fill('Bad Pod');
  await form.getByRole('button', { name: 'Create', exact: true }).click();
  await form.getByText('lowercase letters').first().waitFor();
  await form.getByText('an image is required').waitFor();
  await form.getByLabel('Name', { exact: true }).fill(POD);
  await form.getByLabel('Memory (MiB)', { exact: true }).fill('256');
  await form.getByLabel('Node selector').fill('mvirt-ui-e2e=nowhere');
  const c1 = form.getByRole('group', { name: 'Container 1' });
  await c1.getByLabel('Container name').fill('web');
  await c1.getByLabel('Image').fill('127.0.0.1:5000/httpd:1');
  await c1.getByLabel('Environment (KEY=value, one per line)').fill('GREETING=hello\nMODE=e2e');
  await c1.getByLabel('Ports').fill('http:80');
  await form.getByRole('button', { name: 'Add a container' }).click();
  const c2 = form.getByRole('group', { name: 'Container 2' });
  await c2.getByLabel('Container name').fill('side');
  await c2.getByLabel('Image').fill('127.0.0.1:5000/busybox:1');
  await c2.getByLabel('Command').fill(`sh -c "echo side; sleep 3600"`);
  await c2.getByLabel('Restart policy').selectOption('never');
  await c2.getByLabel('Memory limit (MiB)').fill('64');
  await form.getByLabel(NET).check();
  await form.getByRole('button', { name: 'Add registry credentials' }).click();
  const cred = form.getByRole('group', { name: 'Registry credential 1' });
  await cred.getByLabel('Registry').fill('127.0.0.1:5000');
  await cred.getByLabel('Username').fill('puller');
  await cred.getByLabel('Password').fill(SECRET);
  if ((await cred.getByLabel('Password').getAttribute('type')) !== 'password') throw new Error('the registry password is not a password field');
  await check('pod-create');
  await form.getByRole('button', { name: 'Create', exact: true }).click();
  await page.getByRole('heading', { name: POD }).waitFor();
  const podId = new URL(page.url()).pathname.split('/').pop();
  await page.getByTestId('pod-detail-phase').filter({ hasText: 'pending' }).waitFor();
  await page.getByTestId('pod-scheduling').filter({ hasText: 'pending' }).waitFor();
  await page.getByTestId('usage-unavailable').filter({ hasText: 'Not placed on a node yet' }).waitFor();
  const containerRows = page.getByTestId('container-row');
  await containerRows.nth(1).waitFor();
  if ((await containerRows.count()) !== 2) throw new Error(`expected 2 container rows, got ${await containerRows.count()}`);
  await page.getByText('127.0.0.1:5000 (puller)').waitFor();
  if ((await page.content()).includes(SECRET)) throw new Error('the registry password is in the page');
  const podRead = await rest('GET', `/v1/pods/${podId}`);
  if (podRead.status !== 200 || JSON.stringify(podRead.body).includes(SECRET))
    throw new Error(`GET /v1/pods/${podId}: ${podRead.status}, or it returned the secret`);
  if (podRead.body.spec.containers[1].restart_policy !== 'never' || podRead.body.spec.containers[0].env.GREETING !== 'hello')
    throw new Error(`the pod's spec is not what the form said: ${JSON.stringify(podRead.body.spec.containers)}`);
  log(
    `pod ${POD} created in the UI: pending (${(await page.getByTestId('pod-scheduling').innerText()).trim()}), 2 containers, credentials without their secret`,
  );
  // Its log: the page shows what the API answers for a pod that runs nowhere.
  const logs = await fetch(new URL(`/v1/pods/${podId}/logs?container=web&follow=false&tail=200`, BASE), { headers: { Authorization: `Bearer ${TOKEN}` } });
  const logsText = await logs.text();
  if (logs.ok) {
    await page.getByTestId('logs-state').filter({ hasText: 'lines' }).waitFor();
    log(`its log: the API answered ${logs.status} (${logsText.length} bytes); the page follows it`);
  } else {
    const message = JSON.parse(logsText).error.message;
    await page.getByRole('alert').filter({ hasText: message }).waitFor();
    log(`its log: the page shows the API's ${logs.status} "${message}"`);
  }
  // Exec: the terminal opens and reports how the API ended the session (the pod runs nowhere).
  await page.getByRole('form', { name: 'Run a command' }).getByRole('button', { name: 'Run' }).click();
  await page.getByTestId('exec-terminal').waitFor();
  await page
    .getByTestId('exec-state')
    .filter({ hasText: /failed|closed|error|exited/ })
    .waitFor({ timeout: 15_000 });
  log(`exec on a pending pod: "${(await page.getByTestId('exec-state').innerText()).trim()}"`);
  await check('pod-detail');
  // A pod created through REST appears in the list live.
  await nav('Pods');
  await page.locator(`[data-testid="pod-row"][data-name="${POD}"]`).waitFor();
  const restPod = await rest('POST', '/v1/pods', {
    name: REST_POD,
    spec: {
      vcpus: 1,
      memory_bytes: 128 << 20,
      node_selector: 'mvirt-ui-e2e=nowhere',
      containers: [{ name: 'one', image: '127.0.0.1:5000/busybox:1' }],
    },
  });
  if (restPod.status !== 201 && restPod.status !== 200) throw new Error(`REST pod create: ${restPod.status} ${JSON.stringify(restPod.body)}`);
  const restPodAt = Date.now();
  const restPodRow = page.locator(`[data-testid="pod-row"][data-name="${REST_POD}"]`);
  await restPodRow.waitFor({ timeout: 10_000 });
  await restPodRow.getByTestId('pod-phase').filter({ hasText: 'pending' }).waitFor();
  log(`a pod created through REST appeared in ${Date.now() - restPodAt} ms`);
  await check('pods');
  // A viewer (a token the API gives the viewer role) sees the pods and a pod's page, but no
  // button the API would refuse it: no create, no start/stop/restart/delete, no exec.
  const viewer = await rest('POST', '/v1/tokens', { name: `ui-viewer-${SUFFIX}`, role: 'viewer' });
  if (viewer.status !== 201 && viewer.status !== 200) throw new Error(`viewer token: ${viewer.status} ${JSON.stringify(viewer.body)}`);
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByLabel('API token').fill(viewer.body.token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByText('role: viewer').waitFor();
  await nav('Pods');
  await restPodRow.waitFor();
  if (await page.getByRole('button', { name: 'Create pod' }).count()) throw new Error('a viewer sees Create pod');
  await restPodRow.getByRole('link', { name: REST_POD }).click();
  await page.getByRole('heading', { name: REST_POD }).waitFor();
  await page.getByRole('log').waitFor();
  for (const b of ['Start', 'Stop', 'Restart', 'Force stop', 'Delete', 'Run'])
    if (await page.getByRole('button', { name: b, exact: true }).count()) throw new Error(`a viewer sees the ${b} button on a pod`);
  await check('pod-detail-viewer');
  // … and a VM's page with its usage, but no console (a write channel), action or change; no
  // tokens page in the navigation (the API refuses viewers the token list).
  if (await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Tokens' }).count())
    throw new Error('a viewer is offered the tokens page');
  await nav('VMs');
  await page.locator(`[data-testid="vm-row"][data-name="${VM}"]`).getByRole('link', { name: VM }).click();
  await page.getByRole('heading', { name: VM }).waitFor();
  await waitFor('a CPU value on the VM page (viewer)', 30_000, async () => parseFloat(await page.getByTestId('usage-cpu-now').innerText()) > 0);
  for (const b of ['Console', 'Start', 'Stop', 'Restart', 'Kill', 'Delete', 'Apply', 'Attach'])
    if (await page.getByRole('button', { name: b, exact: true }).count()) throw new Error(`a viewer sees the ${b} button on a VM`);
  await check('vm-detail-viewer');
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByLabel('API token').fill(TOKEN);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByText('role: admin').waitFor();
  await rest('DELETE', `/v1/tokens/${viewer.body.id}`);
  log('a viewer sees the pods without the buttons the API would refuse');
  await nav('Pods');
  // Delete: the UI pod from its page, the REST pod through REST; both rows go away live.
  await page.locator(`[data-testid="pod-row"][data-name="${POD}"]`).getByRole('link', { name: POD }).click();
  await page.getByRole('heading', { name: POD }).waitFor();
  await page.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('button', { name: 'Yes, delete' }).click();
  await page.getByRole('heading', { name: 'Pods' }).waitFor();
  await page.locator(`[data-testid="pod-row"][data-name="${POD}"]`).waitFor({ state: 'detached' });
  const podDel = await rest('DELETE', `/v1/pods/${restPod.body.id}`);
  if (podDel.status !== 204) throw new Error(`REST pod delete: ${podDel.status}`);
  await restPodRow.waitFor({ state: 'detached' });
  log('both pods deleted and gone from the list');

  // 8. Delete: the VM from its page (the row goes away live), the CLI's VM with the CLI, the
  // REST VM through REST, and the network.
  await nav('VMs');
  await page.locator(`[data-testid="vm-row"][data-name="${VM}"]`).getByRole('link', { name: VM }).click();
  await page.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('button', { name: 'Yes, delete' }).click();
  await page.getByRole('heading', { name: 'Virtual machines' }).waitFor();
  await page.locator(`[data-testid="vm-row"][data-name="${VM}"]`).waitFor({ state: 'detached' });
  await cli(['vm', 'delete', CLI_VM]);
  const del = await rest('DELETE', `/v1/vms/${missed.body.id}`);
  if (del.status !== 204) throw new Error(`REST delete: ${del.status}`);
  await page.locator(`[data-testid="vm-row"][data-name="${MISSED}"]`).waitFor({ state: 'detached' });
  await page.locator(`[data-testid="vm-row"][data-name="${CLI_VM}"]`).waitFor({ state: 'detached' });
  log('the VMs deleted and gone from the list');
  await nav('Networks');
  const row = page.locator(`[data-testid="network-row"][data-name="${NET}"]`);
  await row.getByRole('button', { name: 'Delete' }).click();
  await row.getByRole('button', { name: 'Yes, delete' }).click();
  await row.waitFor({ state: 'detached' });
  log(`network ${NET} deleted`);

  if (axeViolations.length) failures.push(`accessibility (axe, critical/serious):\n  ${axeViolations.join('\n  ')}`);
  if (pageErrors.length) failures.push(`uncaught errors in the page:\n  ${pageErrors.join('\n  ')}`);
} catch (e) {
  failures.push(String(e?.stack ?? e));
  if (page) await page.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true }).catch(() => undefined);
} finally {
  await context.close();
  rmSync(cliHome, { recursive: true, force: true });
}

async function waitFor(what, ms, cond) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

if (failures.length) {
  console.error(`e2e FAILED:\n${failures.join('\n')}`);
  console.error(`screenshots in ${SHOTS}`);
  process.exit(1);
}
log(`e2e passed; screenshots in ${SHOTS}`);
