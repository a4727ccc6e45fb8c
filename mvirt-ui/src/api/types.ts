// The API's objects as the UI uses them. Resource types come from the generated OpenAPI types
// (schema.d.ts, `npm run gen:api`); the e2e run fails when that file and the live spec drift.
import type { components } from './schema';

type S = components['schemas'];

export type Vm = S['Vm'];
export type VmSpec = Vm['spec'];
export type Node = S['Node'];
export type Network = S['Network'];
export type Nic = S['Nic'];
export type SecurityGroup = S['SecurityGroup'];
export type SecurityGroupRule = S['SecurityGroupRule'];
export type Template = S['Template'];
export type Volume = S['Volume'];
export type Project = S['Project'];
export type ControlPlane = S['ControlPlaneView'];
export type TokenView = S['TokenView'];
export type Status = S['Status'];
export type ApiEventSchema = S['Event'];

export type Pod = S['Pod'];
export type PodSpec = S['PodSpec'];
export type PodContainerSpec = S['PodContainer'];
export type PodPort = S['ContainerPort'];
export type RegistryCredential = S['RegistryCredential'];
export type RestartPolicy = NonNullable<PodContainerSpec['restart_policy']>;
export type ContainerStatus = S['ContainerStatus'];
/** One line of `GET /v1/pods/{id}/logs` (application/x-ndjson). */
export type PodLogEntry = S['PodLogLine'];

/** One audit log entry (`GET /v1/logs`, and each event of its follow stream). */
export type LogEntry = S['LogEntryView'];

/** Usage, sampled live on the node (`GET /v1/{vms,pods}/{id}/stats`, `/v1/nodes/{id}/stats`). */
export type GuestStats = S['GuestStats'];
export type NodeStats = S['NodeStats'];
