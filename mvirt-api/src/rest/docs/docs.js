// mvirt API reference: fetches /v1/openapi.json with the token (the same tab storage as the web
// UI) and renders operations and schemas as plain HTML. No dependencies, nothing from elsewhere.
'use strict';

const STORAGE = 'mvirt.token';
let doc = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return e;
}

function refName(ref) { return ref.split('/').pop(); }

// A one-line type for a schema: `string`, `Vm`, `[Capacity]`, `string | null`.
function typeOf(s) {
  if (!s) return 'any';
  if (s.$ref) return refName(s.$ref);
  if (s.oneOf || s.anyOf) return (s.oneOf || s.anyOf).map(typeOf).join(' | ');
  if (s.allOf) return s.allOf.map(typeOf).join(' & ');
  const t = Array.isArray(s.type) ? s.type.join(' | ') : (s.type || 'any');
  if (t.startsWith('array')) return '[' + typeOf(s.items) + ']' + t.slice(5);
  return t;
}

function typeCell(s) {
  if (s && s.$ref) return el('a', { href: '#schema-' + refName(s.$ref) }, refName(s.$ref));
  if (s && s.type === 'array' && s.items && s.items.$ref) {
    return el('span', {}, '[', el('a', { href: '#schema-' + refName(s.items.$ref) }, refName(s.items.$ref)), ']');
  }
  return el('code', {}, typeOf(s));
}

// The constraints of a schema as text: enum, pattern, ranges, lengths.
function rules(s) {
  if (!s) return '';
  const out = [];
  if (s.enum) out.push('one of ' + s.enum.map((v) => JSON.stringify(v)).join(', '));
  if (s.pattern) out.push('pattern ' + s.pattern);
  if (s.format) out.push('format ' + s.format);
  if (s.minimum !== undefined) out.push('≥ ' + s.minimum);
  if (s.maximum !== undefined) out.push('≤ ' + s.maximum);
  if (s.multipleOf !== undefined) out.push('multiple of ' + s.multipleOf);
  if (s.minLength !== undefined) out.push('min length ' + s.minLength);
  if (s.maxLength !== undefined) out.push('max length ' + s.maxLength);
  if (s.maxItems !== undefined) out.push('at most ' + s.maxItems + ' items');
  if (s.uniqueItems) out.push('distinct items');
  if (s.items) { const r = rules(s.items); if (r) out.push('items: ' + r); }
  return out.join('; ');
}

// An object schema as a table of its properties (allOf parts are merged).
function objectTable(s) {
  const props = {};
  const required = new Set();
  const parts = s.allOf ? s.allOf : [s];
  const refs = [];
  for (const p of parts) {
    if (p.$ref) { refs.push(refName(p.$ref)); continue; }
    Object.assign(props, p.properties || {});
    (p.required || []).forEach((r) => required.add(r));
  }
  const rows = Object.entries(props).map(([name, ps]) => el('tr', {},
    el('td', {}, el('code', {}, name), required.has(name) ? ' *' : ''),
    el('td', {}, typeCell(ps)),
    el('td', { class: 'desc' }, ps.description || '', rules(ps) ? el('div', { class: 'muted' }, rules(ps)) : null)));
  const wrap = el('div', {});
  if (refs.length) wrap.append(el('p', {}, 'All fields of ', ...refs.map((r) => el('a', { href: '#schema-' + r }, r)), ', and:'));
  if (s.additionalProperties === false) wrap.append(el('p', { class: 'muted' }, 'Unknown fields are refused.'));
  if (rows.length) {
    wrap.append(el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'field (* = required)'), el('th', {}, 'type'), el('th', {}, 'notes'))), el('tbody', {}, rows)));
  } else if (!refs.length) {
    wrap.append(el('p', {}, typeCell(s), ' ', el('span', { class: 'muted' }, rules(s))));
  }
  return wrap;
}

function schemaBlock(s) {
  if (!s) return el('span', { class: 'muted' }, 'no body');
  if (s.$ref) return el('span', {}, typeCell(s));
  if (s.type === 'object' || s.properties || s.allOf) return objectTable(s);
  return el('span', {}, typeCell(s), ' ', el('span', { class: 'muted' }, rules(s)));
}

function operation(path, method, op) {
  const id = (method + path).replace(/[^a-zA-Z0-9]+/g, '-');
  const section = el('section', { class: 'op', id },
    el('h3', {}, el('span', { class: 'method ' + method }, method), ' ', el('code', {}, path)));
  if (op.summary) section.append(el('p', {}, op.summary));
  if (op.description) section.append(el('p', { class: 'desc' }, op.description));
  const params = op.parameters || [];
  if (params.length) {
    section.append(el('h4', {}, 'Parameters'), el('table', {},
      el('thead', {}, el('tr', {}, el('th', {}, 'name'), el('th', {}, 'in'), el('th', {}, 'type'), el('th', {}, 'notes'))),
      el('tbody', {}, params.map((p) => el('tr', {},
        el('td', {}, el('code', {}, p.name), p.required ? ' *' : ''),
        el('td', {}, p.in), el('td', {}, typeCell(p.schema)),
        el('td', { class: 'desc' }, p.description || '', rules(p.schema) ? el('div', { class: 'muted' }, rules(p.schema)) : null))))));
  }
  if (op.requestBody) {
    const content = op.requestBody.content || {};
    for (const [type, media] of Object.entries(content)) {
      section.append(el('h4', {}, 'Request body ', el('span', { class: 'muted' }, type)), schemaBlock(media.schema));
    }
  }
  const responses = Object.entries(op.responses || {}).sort(([a], [b]) => a.localeCompare(b));
  section.append(el('h4', {}, 'Responses'), el('table', {},
    el('tbody', {}, responses.map(([status, r]) => el('tr', {},
      el('td', {}, el('code', {}, status)),
      el('td', { class: 'desc' }, r.description || ''),
      el('td', {}, Object.entries(r.content || {}).map(([type, media]) =>
        el('div', {}, typeCell(media.schema), ' ', el('span', { class: 'muted' }, type)))))))));
  return { id, section };
}

function render() {
  const content = document.getElementById('content');
  const toc = document.getElementById('toc');
  content.replaceChildren();
  toc.replaceChildren();
  const info = doc.info || {};
  content.append(el('h2', {}, (info.title || 'API') + (info.version ? ' ' + info.version : '')));
  if (info.description) content.append(el('p', { class: 'desc' }, info.description));
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      if (!['get', 'put', 'post', 'delete', 'patch'].includes(method)) continue;
      const tag = (op.tags && op.tags[0]) || 'other';
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([path, method, op]);
    }
  }
  for (const [tag, ops] of [...byTag.entries()].sort(([a], [b]) => a.localeCompare(b))) {
    content.append(el('h2', { id: 'tag-' + tag }, tag));
    toc.append(el('h2', {}, el('a', { href: '#tag-' + tag }, tag)));
    for (const [path, method, op] of ops) {
      const { id, section } = operation(path, method, op);
      content.append(section);
      toc.append(el('a', { href: '#' + id }, el('span', { class: 'method ' + method }, method), path));
    }
  }
  const schemas = (doc.components && doc.components.schemas) || {};
  content.append(el('h2', { id: 'schemas' }, 'Schemas'));
  toc.append(el('h2', {}, el('a', { href: '#schemas' }, 'schemas')));
  for (const name of Object.keys(schemas).sort()) {
    const s = schemas[name];
    content.append(el('section', { class: 'op', id: 'schema-' + name }, el('h3', {}, el('code', {}, name)),
      s.description ? el('p', { class: 'desc' }, s.description) : null, schemaBlock(s)));
    toc.append(el('a', { href: '#schema-' + name }, name));
  }
  if (location.hash) { const t = document.getElementById(location.hash.slice(1)); if (t) t.scrollIntoView(); }
}

async function load(token) {
  const status = document.getElementById('status');
  status.textContent = 'loading…';
  status.className = '';
  try {
    const resp = await fetch('/v1/openapi.json', { headers: { Authorization: 'Bearer ' + token } });
    if (!resp.ok) {
      let message = 'HTTP ' + resp.status;
      try { message = (await resp.json()).error.message; } catch (_) { /* not the envelope */ }
      throw new Error(message);
    }
    doc = await resp.json();
    sessionStorage.setItem(STORAGE, token);
    status.textContent = '';
    render();
  } catch (e) {
    status.textContent = 'cannot load the document: ' + e.message;
    status.className = 'error';
  }
}

document.addEventListener('DOMContentLoaded', () => {
  const form = document.getElementById('login');
  const input = document.getElementById('token');
  form.addEventListener('submit', (ev) => { ev.preventDefault(); if (input.value.trim()) load(input.value.trim()); });
  const saved = sessionStorage.getItem(STORAGE);
  if (saved) { input.value = saved; load(saved); }
});
