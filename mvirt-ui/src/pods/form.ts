// The pod create form: its state (strings, as typed), the checks run before sending (mirroring
// the API's rules so the form says what is wrong first; the API has the last word), and the
// POST /v1/pods body built from it.
import type { PodContainerSpec, PodPort, RegistryCredential, RestartPolicy } from '../api/types';
import { MIB, validateInt, validateLabels, validateName, parseLabels } from '../format';
import { splitArgs } from './frames';

export interface ContainerForm {
  name: string;
  image: string;
  command: string;
  args: string;
  env: string;
  workingDir: string;
  cpuMillis: string;
  memoryMib: string;
  restartPolicy: RestartPolicy;
  ports: string;
}

export interface CredentialForm {
  registry: string;
  username: string;
  password: string;
  token: string;
}

export interface PodForm {
  name: string;
  hostname: string;
  labels: string;
  vcpus: string;
  memoryMib: string;
  nodeSelector: string;
  start: boolean;
  networks: string[];
  securityGroups: string[];
  containers: ContainerForm[];
  credentials: CredentialForm[];
}

export const emptyContainer = (name = ''): ContainerForm => ({
  name,
  image: '',
  command: '',
  args: '',
  env: '',
  workingDir: '',
  cpuMillis: '',
  memoryMib: '',
  restartPolicy: 'always',
  ports: '',
});

export const emptyCredential = (): CredentialForm => ({ registry: '', username: '', password: '', token: '' });

export const emptyPodForm = (): PodForm => ({
  name: '',
  hostname: '',
  labels: '',
  vcpus: '1',
  memoryMib: '512',
  nodeSelector: '',
  start: true,
  networks: [],
  securityGroups: [],
  containers: [emptyContainer()],
  credentials: [],
});

export type ContainerErrors = Partial<Record<keyof ContainerForm, string>>;
export type CredentialErrors = Partial<Record<keyof CredentialForm, string>>;
export interface PodFormErrors {
  name?: string;
  hostname?: string;
  labels?: string;
  vcpus?: string;
  memoryMib?: string;
  containers?: string;
  container: ContainerErrors[];
  credential: CredentialErrors[];
}

/** True when the form may be sent. */
export const formOk = (e: PodFormErrors) =>
  !e.name &&
  !e.hostname &&
  !e.labels &&
  !e.vcpus &&
  !e.memoryMib &&
  !e.containers &&
  e.container.every((c) => Object.values(c).every((x) => !x)) &&
  e.credential.every((c) => Object.values(c).every((x) => !x));

// Whitespace or control characters (C0, DEL, C1): never in an image reference or a registry.
// eslint-disable-next-line no-control-regex
const BAD_CHARS = /[\s\u0000-\u001f\u007f-\u009f]/;
const PORT = /^(?:([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?):)?(\d{1,5})(?:\/(tcp|udp))?$/;
const REGISTRY = /^[A-Za-z0-9.\-:[\]]{1,255}$/;
/** The API's limits (mvirt-api validate.rs). */
export const MAX_CONTAINERS = 16;

/** An image reference: required, no whitespace or control characters, at most 255 bytes. */
export function validateImage(v: string): string | undefined {
  if (!v) return 'an image is required (e.g. registry:5000/httpd:2)';
  if (BAD_CHARS.test(v)) return 'an image reference has no spaces or control characters';
  if (new TextEncoder().encode(v).length > 255) return 'an image reference is at most 255 bytes';
  return undefined;
}

/** `KEY=value` lines (empty lines skipped); returns the map or the first error. */
export function parseEnv(v: string): { env: Record<string, string>; error?: string } {
  const env: Record<string, string> = {};
  for (const raw of v.split('\n')) {
    const line = raw.replace(/\r$/, '');
    if (!line.trim()) continue;
    const eq = line.indexOf('=');
    if (eq < 0) return { env, error: `"${line.slice(0, 40)}" is not KEY=value` };
    const key = line.slice(0, eq).trim();
    if (!key || key.length > 1024 || BAD_CHARS.test(key)) return { env, error: `"${key.slice(0, 40)}" is not a variable name (1–1024 characters, no spaces)` };
    if (key in env) return { env, error: `${key} is set twice` };
    env[key] = line.slice(eq + 1);
  }
  return { env };
}

/** Ports as `[name:]port[/tcp|udp]`, separated by commas or spaces. */
export function parsePorts(v: string): { ports: PodPort[]; error?: string } {
  const ports: PodPort[] = [];
  for (const term of v.split(/[\s,]+/).filter(Boolean)) {
    const m = PORT.exec(term);
    const port = m ? Number(m[3]) : 0;
    if (!m || port < 1 || port > 65535) return { ports, error: `"${term}" is not [name:]port[/tcp|udp] with a port 1–65535` };
    const protocol = (m[4] as 'tcp' | 'udp' | undefined) ?? 'tcp';
    if (ports.some((p) => p.container_port === port && p.protocol === protocol)) return { ports, error: `${port}/${protocol} is listed twice` };
    const p: PodPort = { container_port: port, protocol };
    if (m[1]) p.name = m[1];
    ports.push(p);
  }
  return { ports };
}

function argsError(v: string): string | undefined {
  try {
    splitArgs(v);
    return undefined;
  } catch (e) {
    return `${(e as Error).message} (quote with ' or ")`;
  }
}

function optionalInt(v: string, min: number, max: number, what: string) {
  return v.trim() ? validateInt(v, min, max, what) : undefined;
}

export function validatePodForm(f: PodForm): PodFormErrors {
  const e: PodFormErrors = { container: [], credential: [] };
  e.name = validateName(f.name);
  if (f.hostname && validateName(f.hostname)) e.hostname = 'a hostname is a DNS label (lowercase letters, digits, "-")';
  e.labels = validateLabels(f.labels);
  e.vcpus = validateInt(f.vcpus, 1, 64, 'vCPUs');
  e.memoryMib = validateInt(f.memoryMib, 128, 1024 * 1024, 'memory (MiB)');
  if (f.containers.length === 0) e.containers = 'a pod has at least one container';
  if (f.containers.length > MAX_CONTAINERS) e.containers = `a pod has at most ${MAX_CONTAINERS} containers`;
  const seen = new Set<string>();
  for (const c of f.containers) {
    const ce: ContainerErrors = {};
    ce.name = validateName(c.name);
    if (!ce.name && seen.has(c.name)) ce.name = `two containers are named ${c.name}`;
    seen.add(c.name);
    ce.image = validateImage(c.image.trim());
    ce.command = argsError(c.command);
    ce.args = argsError(c.args);
    ce.env = parseEnv(c.env).error;
    if (c.workingDir.trim() && !c.workingDir.trim().startsWith('/')) ce.workingDir = 'an absolute path (starting with /)';
    ce.cpuMillis = optionalInt(c.cpuMillis, 1, 256_000, 'CPU (millicores)');
    ce.memoryMib = optionalInt(c.memoryMib, 1, 1024 * 1024, 'memory limit (MiB)');
    if (!ce.memoryMib && !e.memoryMib && c.memoryMib.trim() && Number(c.memoryMib) > Number(f.memoryMib))
      ce.memoryMib = `more than the pod's ${f.memoryMib} MiB`;
    ce.ports = parsePorts(c.ports).error;
    e.container.push(ce);
  }
  const registries = new Set<string>();
  for (const r of f.credentials) {
    const re: CredentialErrors = {};
    const registry = r.registry.trim();
    if (!registry) re.registry = 'a registry (host[:port]) is required';
    else if (!REGISTRY.test(registry)) re.registry = 'a registry is host[:port] (letters, digits, ".", "-", ":"), without a path';
    else if (registries.has(registry)) re.registry = `credentials for ${registry} are given twice`;
    registries.add(registry);
    if (r.token && (r.username || r.password)) re.token = 'either a username and password or a token, not both';
    else if (!r.token && !r.username) re.username = 'a username (with its password) or a token is required';
    else if (r.username && !r.password) re.password = 'a password is required with a username';
    e.credential.push(re);
  }
  return e;
}

/** The POST /v1/pods body. Call only with a form that passed validatePodForm. */
export function podCreateBody(f: PodForm, project: string) {
  const containers: PodContainerSpec[] = f.containers.map((c) => {
    const spec: PodContainerSpec = {
      name: c.name,
      image: c.image.trim(),
      command: splitArgs(c.command),
      args: splitArgs(c.args),
      env: parseEnv(c.env).env,
      restart_policy: c.restartPolicy,
      ports: parsePorts(c.ports).ports,
    };
    if (c.workingDir.trim()) spec.working_dir = c.workingDir.trim();
    if (c.cpuMillis.trim()) spec.cpu_millis = Number(c.cpuMillis);
    if (c.memoryMib.trim()) spec.memory_bytes = Number(c.memoryMib) * MIB;
    return spec;
  });
  const credentials: RegistryCredential[] = f.credentials.map((r) =>
    r.token ? { registry: r.registry.trim(), token: r.token } : { registry: r.registry.trim(), username: r.username, password: r.password },
  );
  const spec: Record<string, unknown> = {
    vcpus: Number(f.vcpus),
    memory_bytes: Number(f.memoryMib) * MIB,
    containers,
    network_interfaces: f.networks.map((network_id) => ({ network_id, security_group_ids: f.securityGroups })),
    desired_state: f.start ? 'running' : 'stopped',
  };
  if (f.hostname) spec.hostname = f.hostname;
  if (f.nodeSelector.trim()) spec.node_selector = f.nodeSelector.trim();
  if (credentials.length) spec.registry_credentials = credentials;
  const body: Record<string, unknown> = { name: f.name, project, spec };
  if (f.labels.trim()) body.labels = parseLabels(f.labels);
  return body;
}
