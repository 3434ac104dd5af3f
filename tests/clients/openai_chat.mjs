#!/usr/bin/env node
// Drives the official `openai` npm package (Chat Completions) under node.
//
//   NODE_EXTRA_CA_CERTS=DIR/ca.pem node openai_chat.mjs --base-url https://127.0.0.1:PORT \
//       [--model gpt-4o-mini] [--stream [--no-include-usage]] [--calls N] [--tag T] \
//       [--usage JSON] [--prompt TEXT] [--expect-error] [--expect-status N]
//
// TLS trust: node reads NODE_EXTRA_CA_CERTS once at start-up, so the test must
// set it in this process's environment. --ca FILE is accepted for symmetry with
// the Python drivers: if given and NODE_EXTRA_CA_CERTS is not the same file,
// the driver re-executes itself once with NODE_EXTRA_CA_CERTS=FILE.
// Prints one JSON line per call (same fields as the Python drivers); exits
// non-zero on any failure. No prompt or reply text is printed.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    'base-url': { type: 'string' },
    ca: { type: 'string' },
    model: { type: 'string', default: 'gpt-4o-mini' },
    stream: { type: 'boolean', default: false },
    'no-include-usage': { type: 'boolean', default: false },
    calls: { type: 'string', default: '1' },
    tag: { type: 'string' },
    usage: { type: 'string' },
    prompt: { type: 'string', default: 'Say hello.' },
    'max-tokens': { type: 'string', default: '128' },
    'max-retries': { type: 'string', default: '0' },
    timeout: { type: 'string', default: '60' },
    header: { type: 'string', multiple: true, default: [] },
    'expect-error': { type: 'boolean', default: false },
    'expect-status': { type: 'string' },
  },
  strict: true,
});

if (!args['base-url']) {
  console.error('--base-url is required');
  process.exit(2);
}

if (args.ca && path.resolve(process.env.NODE_EXTRA_CA_CERTS || '') !== path.resolve(args.ca)) {
  const self = fileURLToPath(import.meta.url);
  const r = spawnSync(process.execPath, [self, ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, NODE_EXTRA_CA_CERTS: path.resolve(args.ca) },
  });
  process.exit(r.status ?? 1);
}

const { default: OpenAI } = await import('openai');

function openaiBase(url) {
  url = url.replace(/\/+$/, '');
  return url.endsWith('/v1') ? url : `${url}/v1`;
}

const headers = {};
if (args.tag) headers['x-test-tag'] = args.tag;
if (args.usage) {
  JSON.parse(args.usage); // fail early on bad JSON
  headers['x-mock-usage'] = args.usage;
}
for (const item of args.header) {
  const i = item.indexOf('=');
  if (i < 0) {
    console.error(`--header needs NAME=VALUE, got ${item}`);
    process.exit(2);
  }
  headers[item.slice(0, i).trim()] = item.slice(i + 1).trim();
}

const client = new OpenAI({
  apiKey: process.env.OPENAI_API_KEY || 'sk-mock-agentwatch',
  baseURL: openaiBase(args['base-url']),
  maxRetries: Number(args['max-retries']),
  timeout: Number(args.timeout) * 1000,
});

function otel(u) {
  if (!u) return null;
  const p = u.prompt_tokens_details || {};
  const c = u.completion_tokens_details || {};
  return {
    input_tokens: u.prompt_tokens,
    output_tokens: u.completion_tokens,
    cache_read_tokens: p.cached_tokens || 0,
    cache_write_tokens: p.cache_write_tokens || 0,
    reasoning_tokens: c.reasoning_tokens || 0,
  };
}

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  }
  return v;
}

async function oneCall() {
  const messages = [{ role: 'user', content: args.prompt }];
  const base = { model: args.model, messages, max_completion_tokens: Number(args['max-tokens']) };
  if (!args.stream) {
    const r = await client.chat.completions.create(base, { headers });
    const text = r.choices?.[0]?.message?.content || '';
    return [r.usage ?? null, text.length];
  }
  const includeUsage = !args['no-include-usage'];
  const body = { ...base, stream: true };
  if (includeUsage) body.stream_options = { include_usage: true };
  const stream = await client.chat.completions.create(body, { headers });
  let usage = null;
  let chars = 0;
  let finished = false;
  for await (const chunk of stream) {
    for (const ch of chunk.choices || []) {
      if (ch.delta?.content) chars += ch.delta.content.length;
      if (ch.finish_reason) finished = true;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  if (!finished) throw new Error('stream ended without a finish_reason');
  if (includeUsage && !usage) throw new Error('include_usage was set but no usage chunk arrived');
  return [usage, chars];
}

const expectStatus = args['expect-status'] !== undefined ? Number(args['expect-status']) : null;
const expectError = args['expect-error'] || expectStatus !== null;
const failures = [];
const calls = Number(args.calls);
for (let i = 1; i <= calls; i++) {
  const rec = { driver: 'openai_chat.mjs', call: i, api: 'chat.completions', model: args.model, stream: args.stream };
  try {
    const [usage, chars] = await oneCall();
    Object.assign(rec, { status: 'ok', usage, otel: otel(usage), text_chars: chars });
    console.log(JSON.stringify(sortKeys(rec)));
    if (expectError) failures.push(`call ${i}: succeeded but an error was expected`);
  } catch (e) {
    const status = typeof e?.status === 'number' ? e.status : null;
    Object.assign(rec, { status: 'error', usage: null, otel: null, error: e?.constructor?.name || 'Error', error_status: status });
    console.log(JSON.stringify(sortKeys(rec)));
    if (!expectError) failures.push(`call ${i}: ${e?.constructor?.name}: ${e?.message} ${e?.cause ?? ''}`);
    else if (expectStatus !== null && status !== expectStatus) {
      failures.push(`call ${i}: wanted status ${expectStatus}, got ${status}`);
    }
  }
}
for (const f of failures) console.error(f);
process.exit(failures.length ? 1 : 0);
