// The pod kind as the UI uses it, written from the pod REST contract (briefs/POD_CONTRACT.md,
// issue 19) until the API serves /v1/pods and its generated types (schema.d.ts) carry `Pod`.
// Then these become aliases of the generated ones (like ./types.ts).
import type { Status } from './types';

export type RestartPolicy = 'always' | 'on_failure' | 'never';
export type PortProtocol = 'tcp' | 'udp';

export interface PodPort {
  name?: string | null;
  container_port: number;
  protocol?: PortProtocol;
}

export interface PodContainerSpec {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: Record<string, string>;
  working_dir?: string | null;
  cpu_millis?: number | null;
  memory_bytes?: number | null;
  restart_policy?: RestartPolicy;
  ports?: PodPort[];
}

export interface PodNetworkInterface {
  network_id: string;
  security_group_ids?: string[];
  ipv4_address?: string | null;
  ipv6_address?: string | null;
}

/** Write-only secrets: a GET reads back only `registry` and `username`. */
export interface RegistryCredential {
  registry: string;
  username?: string | null;
  password?: string;
  token?: string;
}

export interface PodSpec {
  vcpus: number;
  memory_bytes: number;
  hostname?: string | null;
  containers: PodContainerSpec[];
  nic_ids?: string[];
  network_interfaces?: PodNetworkInterface[];
  node_selector?: string | null;
  desired_state?: 'running' | 'stopped';
  registry_credentials?: RegistryCredential[];
}

export type ContainerState = 'created' | 'running' | 'exited' | 'waiting';

export interface ContainerStatus {
  name: string;
  image?: string;
  image_digest?: string | null;
  state?: ContainerState | string;
  exit_code?: number | null;
  restart_count?: number;
  oom_killed?: boolean;
  message?: string | null;
  started_at?: string | null;
  finished_at?: string | null;
}

export type PodStatus = Partial<Status> & {
  containers?: ContainerStatus[];
  artefacts_version?: string | null;
};

export interface Pod {
  id: string;
  name: string;
  project: string;
  labels?: Record<string, string>;
  revision: number;
  spec_revision?: number;
  created_at?: string;
  updated_at?: string;
  spec: PodSpec;
  status?: PodStatus | null;
  node_id?: string | null;
  node_state?: string | null;
  scheduling?: { state: string; reason?: string | null } | null;
  restart_generation?: number;
  [k: string]: unknown;
}

/** One line of `GET /v1/pods/{id}/logs` (application/x-ndjson). */
export interface PodLogEntry {
  container: string;
  stream: 'stdout' | 'stderr' | string;
  time: string;
  line: string;
}

/** The phase to show: the node's report, else where scheduling stands. */
export function podPhase(p: Pod): string {
  if (p.status?.phase) return p.status.phase;
  if (p.scheduling?.state === 'pending') return 'pending';
  return 'creating';
}
