// Formatting and client-side validation shared by pages (validation mirrors the API's rules so
// a form says what is wrong before it sends; the API still has the last word).

export function bytes(n: number | undefined | null): string {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 10 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

export function ago(iso: string | undefined | null, now = Date.now()): string {
  if (!iso) return '—';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = Math.round((now - t) / 1000);
  if (s < 60) return `${Math.max(s, 0)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export const shortId = (id: string | undefined | null) => (id ? id.slice(-8) : '—');

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
export function validateName(v: string): string | undefined {
  if (!v) return 'a name is required';
  if (!DNS_LABEL.test(v)) return 'lowercase letters, digits and "-", 1–63 characters, not starting or ending with "-"';
  return undefined;
}

export function validateCidr4(v: string, required = false): string | undefined {
  if (!v) return required ? 'a prefix is required' : undefined;
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(v);
  if (!m || m.slice(1, 5).some((o) => Number(o) > 255) || Number(m[5]) > 32) return 'an IPv4 prefix like 10.0.0.0/24';
  return undefined;
}

export function validateCidr6(v: string): string | undefined {
  if (!v) return undefined;
  const [addr, len, extra] = v.split('/');
  if (extra !== undefined || !len || !/^\d{1,3}$/.test(len) || Number(len) > 128 || !/^[0-9a-fA-F:]+$/.test(addr) || !addr.includes(':'))
    return 'an IPv6 prefix like fd00::/64';
  return undefined;
}

export function validateInt(v: string, min: number, max: number, what: string): string | undefined {
  if (!/^\d+$/.test(v.trim())) return `${what} must be a whole number`;
  const n = Number(v);
  if (n < min || n > max) return `${what} must be between ${min} and ${max}`;
  return undefined;
}

export function validateLabels(v: string): string | undefined {
  if (!v.trim()) return undefined;
  for (const term of v.split(',')) {
    const [k, val, extra] = term.split('=');
    if (extra !== undefined || !k?.trim() || val === undefined) return `"${term}" is not key=value`;
  }
  return undefined;
}

export function parseLabels(v: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const term of v.split(',')) {
    if (!term.trim()) continue;
    const [k, val] = term.split('=');
    out[k.trim()] = (val ?? '').trim();
  }
  return out;
}

export const formatLabels = (l: Record<string, string> | undefined) =>
  Object.entries(l ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(',');

export const MIB = 1024 * 1024;
export const GIB = 1024 * MIB;

/** What is placed on a node, from the live VM and volume lists (the API's `allocated`, kept live:
 *  placing a VM emits a VM event, not a node event). */
export function allocatedOn(
  nodeId: string,
  vms: { node_id?: string | null; spec: { vcpus: number; memory_bytes: number } }[],
  volumes: { node_id?: string | null; spec: { size_bytes: number } }[],
) {
  const cap = { vcpus: 0, memory_bytes: 0, storage_bytes: 0 };
  for (const vm of vms)
    if (vm.node_id === nodeId) {
      cap.vcpus += vm.spec.vcpus;
      cap.memory_bytes += vm.spec.memory_bytes;
    }
  for (const v of volumes) if (v.node_id === nodeId) cap.storage_bytes += v.spec.size_bytes;
  return cap;
}
