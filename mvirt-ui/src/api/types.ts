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
