#!/usr/bin/env node
// Command-line front end for the interop OIDC server's test-only routes.
//
//   node mint.mjs [--user U] [--client ID] [--scope "S ..."] [--ttl SECONDS]
//       -> prints {"refresh_token", "grant_id", "user", "client_id", "scope", "access_token_ttl"}
//   node mint.mjs --revoke GRANT_ID
//   node mint.mjs --revoke-token REFRESH_TOKEN
//
// The server URL comes from --url, else $INTEROP_OAUTH_ISSUER, else
// http://127.0.0.1:$OIDC_PORT (default 9470).

const args = process.argv.slice(2);
const opts = {};
for (let i = 0; i < args.length; i += 1) {
  const a = args[i];
  if (!a.startsWith('--')) usage(`unexpected argument ${a}`);
  const key = a.slice(2);
  const value = args[i + 1];
  if (value === undefined) usage(`${a} needs a value`);
  opts[key] = value;
  i += 1;
}

function usage(msg) {
  console.error(`mint.mjs: ${msg}`);
  console.error('usage: mint.mjs [--url URL] [--user U] [--client ID] [--scope S] [--ttl N] | --revoke GRANT_ID | --revoke-token RT');
  process.exit(2);
}

const known = new Set(['url', 'user', 'client', 'scope', 'ttl', 'revoke', 'revoke-token']);
for (const k of Object.keys(opts)) if (!known.has(k)) usage(`unknown option --${k}`);

const base = opts.url || process.env.INTEROP_OAUTH_ISSUER || `http://127.0.0.1:${process.env.OIDC_PORT || 9470}`;

let path;
let body;
if (opts.revoke || opts['revoke-token']) {
  path = '/test/revoke';
  body = opts.revoke ? { grant_id: opts.revoke } : { refresh_token: opts['revoke-token'] };
} else {
  path = '/test/grant';
  body = {};
  if (opts.user) body.user = opts.user;
  if (opts.client) body.client_id = opts.client;
  if (opts.scope) body.scope = opts.scope;
  if (opts.ttl) body.access_token_ttl = Number(opts.ttl);
}

const res = await fetch(new URL(path, base), {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(body),
});
const text = await res.text();
if (!res.ok) {
  console.error(`mint.mjs: ${res.status} ${text}`);
  process.exit(1);
}
console.log(text);
