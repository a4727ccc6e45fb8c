// Generates the UI's API types (src/api/schema.d.ts) from a live mvirt-api's /v1/openapi.json
// with openapi-typescript. Shared by gen-api.mjs (writes the file) and the e2e run (fails when
// the checked-in file and the live spec differ).
import openapiTS, { astToString } from 'openapi-typescript';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export const SCHEMA_FILE = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'api', 'schema.d.ts');

const HEADER = `// Generated from mvirt-api's /v1/openapi.json by \`npm run gen:api\` (openapi-typescript).
// Do not edit: regenerate against a running mvirt-api when the API changes. The e2e run fails
// when this file and the live spec drift.
`;

export async function fetchSpec(apiUrl, token) {
  const resp = await fetch(new URL('/v1/openapi.json', apiUrl), { headers: { Authorization: `Bearer ${token}` } });
  if (!resp.ok) throw new Error(`GET /v1/openapi.json: HTTP ${resp.status} ${await resp.text()}`);
  return resp.json();
}

/** Makes duplicate operationIds unique (the API's per-kind handlers are all named list, get, …:
 *  the spec repeats `list` for every kind, which OpenAPI forbids and openapi-typescript refuses). */
export function uniqueOperationIds(spec) {
  const seen = new Map();
  for (const ops of Object.values(spec.paths ?? {}))
    for (const op of Object.values(ops)) if (op?.operationId) seen.set(op.operationId, (seen.get(op.operationId) ?? 0) + 1);
  for (const [p, ops] of Object.entries(spec.paths ?? {}))
    for (const [method, op] of Object.entries(ops))
      if (op?.operationId && seen.get(op.operationId) > 1) op.operationId = `${method}${p.replace(/[^A-Za-z0-9]+/g, '_')}`;
  return spec;
}

/** Drops the prose (`description`, `summary` strings): the types, and so the drift check, follow
 *  the API's shapes, not the wording of its docs. A property *named* description is an object
 *  there and stays. */
export function withoutProse(node) {
  if (Array.isArray(node)) node.forEach(withoutProse);
  else if (node && typeof node === 'object')
    for (const [k, v] of Object.entries(node)) {
      if ((k === 'description' || k === 'summary') && typeof v === 'string') delete node[k];
      else withoutProse(v);
    }
  return node;
}

export async function typesFor(spec) {
  const ast = await openapiTS(withoutProse(uniqueOperationIds(structuredClone(spec))), { alphabetize: true });
  return HEADER + astToString(ast);
}
