// npm run gen:api — rewrites src/api/schema.d.ts from a running API.
// MVIRT_API_URL (default http://127.0.0.1:8080) and MVIRT_TOKEN (or MVIRT_TOKEN_FILE).
import { readFileSync, writeFileSync } from 'node:fs';
import { fetchSpec, SCHEMA_FILE, typesFor } from './openapi-types.mjs';

const url = process.env.MVIRT_API_URL ?? 'http://127.0.0.1:8080';
const token = process.env.MVIRT_TOKEN ?? readFileSync(process.env.MVIRT_TOKEN_FILE ?? '/var/lib/mvirt-dev/api/admin.token', 'utf8').trim();
const types = await typesFor(await fetchSpec(url, token));
writeFileSync(SCHEMA_FILE, types);
console.log(`wrote ${SCHEMA_FILE} from ${url}`);
