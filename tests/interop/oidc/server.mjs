// Test-only OAuth2 / OpenID Connect server for missive's interop harness.
//
// Wraps panva's oidc-provider (pinned in package.json) with:
//   * two confidential clients for missive (normal and short access-token TTL)
//     and one for Dovecot's token introspection;
//   * refresh-token rotation (reusing a consumed refresh token revokes the grant);
//   * the client_credentials grant;
//   * one client, missive-oidc, that behaves as a standard OpenID provider does:
//     its one registered redirect URI matches exactly (port included), and
//     offline_access (a refresh token) is granted only with prompt=consent;
//   * an automatic (no UI) login + consent, so the authorization-code + PKCE flow
//     of `missive auth generic` can be driven by a plain HTTP client;
//   * test-only helper routes under /test/ to mint and revoke grants.
//
// Everything is kept in memory: restarting the server forgets all grants.
// It listens on 127.0.0.1 only. NEVER use this outside tests.

import http from 'node:http';
import crypto from 'node:crypto';
import { URL } from 'node:url';
import Provider from 'oidc-provider';

const env = process.env;

function intEnv(name, dflt) {
  const raw = env[name];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) {
    console.error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return n;
}

const HOST = '127.0.0.1';
const PORT = intEnv('OIDC_PORT', 9470);
const ISSUER = `http://${HOST}:${PORT}`;
const ACCESS_TOKEN_TTL = intEnv('OIDC_ACCESS_TOKEN_TTL', 60);
const SHORT_ACCESS_TOKEN_TTL = intEnv('OIDC_SHORT_ACCESS_TOKEN_TTL', 5);
const DEFAULT_USER = env.OIDC_DEFAULT_USER || 'alice@missive.test';
// client_credentials tokens have no end user; like Microsoft 365 app-only access,
// the token is good for one mailbox, which Dovecot compares with the SASL user.
const CC_USER = env.OIDC_CC_USER || DEFAULT_USER;
const DEFAULT_SCOPE = 'openid email offline_access smtp';

const MISSIVE_CLIENT_ID = env.OIDC_CLIENT_ID || 'missive';
const MISSIVE_CLIENT_SECRET = env.OIDC_CLIENT_SECRET || 'missive-secret';
const SHORT_CLIENT_ID = env.OIDC_SHORT_CLIENT_ID || 'missive-short';
const STRICT_CLIENT_ID = env.OIDC_STRICT_CLIENT_ID || 'missive-oidc';
const STRICT_REDIRECT_URI = env.OIDC_STRICT_REDIRECT_URI || 'http://127.0.0.1:9471/callback';
const DOVECOT_CLIENT_ID = env.OIDC_DOVECOT_CLIENT_ID || 'dovecot';
const DOVECOT_CLIENT_SECRET = env.OIDC_DOVECOT_CLIENT_SECRET || 'dovecot-secret';

// Access-token lifetime per client; /test/grant can override it per grant.
const clientTtl = new Map([
  [MISSIVE_CLIENT_ID, ACCESS_TOKEN_TTL],
  [SHORT_CLIENT_ID, SHORT_ACCESS_TOKEN_TTL],
  [STRICT_CLIENT_ID, ACCESS_TOKEN_TTL],
]);
const grantTtl = new Map(); // grantId -> seconds

function log(...args) {
  console.log(new Date().toISOString(), ...args);
}

function isEmail(s) {
  return typeof s === 'string' && /^[^\s@]+@[^\s@]+$/.test(s);
}

const missiveClient = (clientId) => ({
  client_id: clientId,
  client_secret: MISSIVE_CLIENT_SECRET,
  // A confidential client may authenticate with client_secret_basic or
  // client_secret_post: oidc-provider treats the two as one family and accepts
  // either for a client registered with one of them.
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  response_types: ['code'],
  // "native" + loopback redirect: any port is accepted (RFC 8252 §7.3); the
  // path check is relaxed below too, so missive's `auth` command can pick both.
  application_type: 'native',
  redirect_uris: ['http://127.0.0.1/callback', 'http://localhost/callback'],
  scope: DEFAULT_SCOPE,
});

// Generated at every start: nothing signed by a previous run needs to verify.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'interop-1', alg: 'RS256', use: 'sig' };

const configuration = {
  clients: [
    missiveClient(MISSIVE_CLIENT_ID),
    missiveClient(SHORT_CLIENT_ID),
    {
      // No loopback leniency: a "web" client, whose redirect URI must match the
      // registered one exactly, as most OpenID providers require of every client.
      ...missiveClient(STRICT_CLIENT_ID),
      application_type: 'web',
      redirect_uris: [STRICT_REDIRECT_URI],
    },
    {
      // Used by Dovecot (or anyone) to call the introspection endpoint only.
      client_id: DOVECOT_CLIENT_ID,
      client_secret: DOVECOT_CLIENT_SECRET,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'email', 'offline_access', 'smtp'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  async findAccount(ctx, id) {
    if (!isEmail(id)) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: id, email_verified: true };
      },
    };
  },
  // Dovecot maps the token to the SMTP user through this claim
  // (username_attribute = email); it shows up in the introspection response.
  async extraTokenClaims(ctx, token) {
    if (token.kind === 'AccessToken') return { email: token.accountId };
    if (token.kind === 'ClientCredentials') return { email: CC_USER };
    return undefined;
  },
  features: {
    devInteractions: { enabled: false }, // replaced by the automatic interaction below
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Only the registered confidential clients get here (public clients do
      // not exist). Never report a refresh token as active to Dovecot: a
      // refresh token must not work as an SMTP bearer token.
      async allowedPolicy(ctx, client, token) {
        return !(client.clientId === DOVECOT_CLIENT_ID && token.kind === 'RefreshToken');
      },
    },
    revocation: { enabled: true },
    userinfo: { enabled: true },
  },
  // Each refresh_token grant consumes the presented refresh token and returns a
  // new one; presenting a consumed one revokes the whole grant (invalid_grant).
  rotateRefreshToken: true,
  // Issue a refresh token on every authorization-code exchange for clients
  // allowed the refresh_token grant; oidc-provider would otherwise also require
  // prompt=consent next to offline_access (OIDC Core §11), which real
  // providers (Google, Microsoft) do not.
  // missive-oidc keeps the standard rule: only when offline_access was granted,
  // which oidc-provider (OIDC Core §11) drops from a request without prompt=consent.
  async issueRefreshToken(ctx, client, code) {
    if (client.clientId === STRICT_CLIENT_ID) {
      return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
    }
    return client.grantTypeAllowed('refresh_token');
  },
  async expiresWithSession() {
    return false;
  },
  ttl: {
    AccessToken(ctx, token, client) {
      return grantTtl.get(token.grantId) ?? clientTtl.get(client.clientId) ?? ACCESS_TOKEN_TTL;
    },
    ClientCredentials(ctx, token, client) {
      return clientTtl.get(client.clientId) ?? ACCESS_TOKEN_TTL;
    },
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    RefreshToken: 14 * 24 * 3600,
  },
  interactions: {
    url(ctx, interaction) {
      return `/interaction/${interaction.uid}`;
    },
  },
  routes: {
    authorization: '/auth',
    token: '/token',
    introspection: '/token/introspection',
    revocation: '/token/revocation',
    userinfo: '/me',
    jwks: '/jwks',
  },
  pkce: { methods: ['S256'] },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
};

const provider = new Provider(ISSUER, configuration);

// Accept any loopback http redirect URI (any port, any path) for the native
// clients, so the Rust side may choose its callback path freely.
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
const originalRedirectUriAllowed = provider.Client.prototype.redirectUriAllowed;
provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
  if (originalRedirectUriAllowed.call(this, value)) return true;
  try {
    const u = new URL(value);
    return this.applicationType === 'native' && u.protocol === 'http:' && LOOPBACK.has(u.hostname);
  } catch {
    return false;
  }
};

for (const ev of ['grant.error', 'introspection.error', 'revocation.error', 'server_error', 'authorization.error']) {
  provider.on(ev, (ctx, err) => log(`${ev}: ${err.name}: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}${err.error_detail ? ` [${err.error_detail}]` : ''}`));
}
provider.on('grant.revoked', (ctx, grantId) => log(`grant revoked: ${grantId}`));

// ---- helpers for the test-only routes ------------------------------------

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  const raw = Buffer.concat(chunks).toString('utf8');
  if (!raw) return {};
  const type = (req.headers['content-type'] || '').split(';')[0].trim();
  if (type === 'application/x-www-form-urlencoded') {
    return Object.fromEntries(new URLSearchParams(raw));
  }
  try {
    return JSON.parse(raw);
  } catch {
    throw Object.assign(new Error('body must be JSON or application/x-www-form-urlencoded'), { status: 400 });
  }
}

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(data);
}

// Mints a grant + refresh token as if `user` had gone through the consent
// screen. Body (JSON or form): user, client_id, scope, access_token_ttl; all optional.
async function testGrant(body) {
  const user = body.user || DEFAULT_USER;
  const clientId = body.client_id || MISSIVE_CLIENT_ID;
  const scope = body.scope || DEFAULT_SCOPE;
  if (!isEmail(user)) throw Object.assign(new Error('user must be an email address'), { status: 400 });
  const client = await provider.Client.find(clientId);
  if (!client || !client.grantTypeAllowed('refresh_token')) {
    throw Object.assign(new Error(`unknown client or no refresh_token grant: ${clientId}`), { status: 400 });
  }
  const grant = new provider.Grant({ accountId: user, clientId });
  grant.addOIDCScope(scope);
  const grantId = await grant.save();
  if (body.access_token_ttl !== undefined) {
    const ttl = Number(body.access_token_ttl);
    if (!Number.isInteger(ttl) || ttl <= 0) throw Object.assign(new Error('access_token_ttl must be a positive integer'), { status: 400 });
    grantTtl.set(grantId, ttl);
  }
  const rt = new provider.RefreshToken({
    accountId: user,
    client,
    grantId,
    scope,
    gty: 'authorization_code',
    authTime: Math.floor(Date.now() / 1000),
    expiresWithSession: false,
  });
  const refreshToken = await rt.save();
  return {
    refresh_token: refreshToken,
    grant_id: grantId,
    user,
    client_id: clientId,
    scope,
    access_token_ttl: grantTtl.get(grantId) ?? clientTtl.get(clientId) ?? ACCESS_TOKEN_TTL,
  };
}

// Revokes a whole grant (every access and refresh token of it), as a user
// removing the app's access at the provider would. Body: grant_id or refresh_token.
async function testRevoke(body) {
  let grantId = body.grant_id;
  if (!grantId && body.refresh_token) {
    const rt = await provider.RefreshToken.find(body.refresh_token, { ignoreExpiration: true });
    if (!rt) throw Object.assign(new Error('refresh token not found'), { status: 404 });
    grantId = rt.grantId;
  }
  if (!grantId) throw Object.assign(new Error('grant_id or refresh_token required'), { status: 400 });
  await Promise.all([
    provider.AccessToken.adapter.revokeByGrantId(grantId),
    provider.RefreshToken.adapter.revokeByGrantId(grantId),
    provider.AuthorizationCode.adapter.revokeByGrantId(grantId),
    provider.Grant.adapter.destroy(grantId),
  ]);
  grantTtl.delete(grantId);
  log(`test: grant revoked: ${grantId}`);
  return { revoked: true, grant_id: grantId };
}

// Automatic login + consent: logs in `login_hint` (default DEFAULT_USER) and
// grants every requested scope, then redirects back into the flow.
async function autoInteraction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    const accountId = isEmail(params.login_hint) ? params.login_hint : DEFAULT_USER;
    await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  throw new Error(`unsupported prompt ${prompt.name}`);
}

const callback = provider.callback();

const server = http.createServer(async (req, res) => {
  const started = Date.now();
  res.on('finish', () => log(`${req.method} ${req.url.split('?')[0]} -> ${res.statusCode} (${Date.now() - started} ms)`));
  const path = req.url.split('?')[0];
  try {
    if (path === '/test/health') {
      sendJson(res, 200, { ok: true, issuer: ISSUER });
      return;
    }
    if (path === '/test/grant' && req.method === 'POST') {
      sendJson(res, 200, await testGrant(await readBody(req)));
      return;
    }
    if (path === '/test/revoke' && req.method === 'POST') {
      sendJson(res, 200, await testRevoke(await readBody(req)));
      return;
    }
    if (path.startsWith('/interaction/') && req.method === 'GET') {
      await autoInteraction(req, res);
      return;
    }
  } catch (err) {
    log(`test route error on ${path}: ${err.stack || err}`);
    if (!res.headersSent) sendJson(res, err.status || 500, { error: err.message });
    return;
  }
  callback(req, res);
});

server.listen(PORT, HOST, () => {
  log(`missive interop OIDC server listening on ${ISSUER} (access token TTL ${ACCESS_TOKEN_TTL}s, short ${SHORT_ACCESS_TOKEN_TTL}s)`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    log(`${sig}: shutting down`);
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
