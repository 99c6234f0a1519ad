// A real OAuth provider for credgate's refresh tests (tests/e2e/test_refresh_oidc.py):
// oidc-provider (pinned in package.json) on 127.0.0.1, in-memory, with refresh-token
// rotation and its built-in reuse detection (presenting a consumed refresh token revokes
// the whole grant), introspection for the upstream, and a small test side channel.
//
//   node provider.mjs <credgate-client-secret> <upstream-client-secret>
//
// Listens on a free port and prints one line `READY {"issuer": ..., "port": ...}`.
// Clients: `credgate` (client_secret_post, authorization_code + refresh_token) and
// `upstream` (client_secret_basic, used by the test upstream for introspection only).
//
// Side channel (JSON in and out, under /_test/, same port; 127.0.0.1 only):
//   POST /_test/seed {scope?, revokeAccess?} -> {grantId, access_token, refresh_token}
//        a Grant and a RefreshToken (gty authorization_code) as after a browser login, plus
//        an access token; with revokeAccess the access token is destroyed at once (the
//        provider no longer accepts it).
//   POST /_test/config {accessTtl?, delayMs?} -> the settings in force
//        accessTtl: lifetime (s) of access tokens issued from now on;
//        delayMs: hold every refresh_token answer this long AFTER the provider has
//        rotated the refresh token and issued the new pair.
//   POST /_test/revoke {grantId} -> {} revokes the grant and all its tokens
//   GET  /_test/stats -> {refreshes: [...], revokedGrants: [...], introspections: n}
//        one entry per refresh_token request: {grantId, refreshToken, status, error,
//        errorDescription, errorDetail, newAccessToken, newRefreshToken, at (unix s),
//        issued, answered,
//        params (the names of the form fields sent)}; `issued` is set as soon as the
//        handler is done (before any delay), `answered` when the answer is sent.

import http from 'node:http';
import Provider from 'oidc-provider';

const [credgateSecret, upstreamSecret] = process.argv.slice(2);
if (!credgateSecret || !upstreamSecret) {
  console.error('usage: node provider.mjs <credgate-client-secret> <upstream-client-secret>');
  process.exit(2);
}

const settings = { accessTtl: 3600, delayMs: 0 };
const stats = { refreshes: [], revokedGrants: [], introspections: 0 };
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

const server = http.createServer();
await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'credgate',
      client_secret: credgateSecret,
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
    },
    {
      client_id: 'upstream',
      client_secret: upstreamSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
  ],
  scopes: ['openid', 'offline_access', 'repo'],
  rotateRefreshToken: true,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true },
  },
  ttl: {
    AccessToken: () => settings.accessTtl,
    RefreshToken: () => 14 * 24 * 3600,
    Grant: () => 14 * 24 * 3600,
    ClientCredentials: () => 600,
    Interaction: () => 600,
    Session: () => 3600,
    IdToken: () => 3600,
    AuthorizationCode: () => 60,
  },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return { sub: id }; } };
  },
});
provider.on('grant.revoked', (ctx, grantId) => { stats.revokedGrants.push(grantId); });
provider.on('grant.error', (ctx, err) => { ctx.state.errorDetail = err?.error_detail ?? err?.message; });
provider.on('server_error', (ctx, err) => { console.error('server_error', err); });

// Counts every refresh_token request at the token endpoint, and can hold the answer after
// the provider has rotated the refresh token (the crash window credgate documents).
provider.use(async (ctx, next) => {
  if (ctx.path === '/token/introspection') stats.introspections += 1;
  if (ctx.path !== '/token' || ctx.method !== 'POST') {
    await next();
    return;
  }
  const entry = { issued: false, answered: false };
  await next();
  const params = ctx.oidc?.params ?? {};
  if (params.grant_type !== 'refresh_token') return;
  entry.params = Object.keys(ctx.oidc?.body ?? {}).sort();
  entry.refreshToken = params.refresh_token;
  entry.grantId = ctx.oidc?.entities?.Grant?.jti ?? null;
  entry.status = ctx.status;
  entry.error = ctx.body?.error ?? null;
  entry.errorDescription = ctx.body?.error_description ?? null;
  entry.errorDetail = ctx.state.errorDetail ?? null;
  entry.issued = ctx.status === 200;
  entry.newAccessToken = ctx.body?.access_token ?? null;
  entry.newRefreshToken = ctx.body?.refresh_token ?? null;
  entry.at = Date.now() / 1000;
  stats.refreshes.push(entry);
  if (settings.delayMs > 0) await sleep(settings.delayMs);
  entry.answered = true;
});

const seed = async (body) => {
  const client = await provider.Client.find('credgate');
  const accountId = `user-${Math.random().toString(36).slice(2, 10)}`;
  const scope = body.scope ?? 'offline_access repo';
  const grant = new provider.Grant({ accountId, clientId: client.clientId });
  grant.addOIDCScope(scope);
  const grantId = await grant.save();
  const rt = new provider.RefreshToken({
    accountId, client, grantId, gty: 'authorization_code', scope, rotations: 0,
  });
  const refreshToken = await rt.save();
  const at = new provider.AccessToken({
    accountId, client, grantId, gty: 'authorization_code', scope,
  });
  const accessToken = await at.save();
  if (body.revokeAccess) await at.destroy();
  return { grantId, access_token: accessToken, refresh_token: refreshToken };
};

const revokeGrant = async ({ grantId }) => {
  await Promise.all([
    provider.AccessToken.revokeByGrantId(grantId),
    provider.RefreshToken.revokeByGrantId(grantId),
    provider.Grant.adapter.destroy(grantId),
  ]);
  stats.revokedGrants.push(grantId);
  return {};
};

const readJson = async (req) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString() || '{}';
  return JSON.parse(text);
};

const side = async (req, res) => {
  let out;
  try {
    const body = req.method === 'POST' ? await readJson(req) : {};
    const path = new URL(req.url, issuer).pathname;
    if (path === '/_test/seed' && req.method === 'POST') out = await seed(body);
    else if (path === '/_test/config' && req.method === 'POST') {
      for (const k of ['accessTtl', 'delayMs']) if (typeof body[k] === 'number') settings[k] = body[k];
      out = settings;
    } else if (path === '/_test/revoke' && req.method === 'POST') out = await revokeGrant(body);
    else if (path === '/_test/stats' && req.method === 'GET') out = stats;
    else {
      res.writeHead(404).end();
      return;
    }
  } catch (e) {
    res.writeHead(500, { 'content-type': 'text/plain' }).end(String(e?.stack ?? e));
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(out));
};

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/_test/')) side(req, res);
  else callback(req, res);
});

console.log(`READY ${JSON.stringify({ issuer, port })}`);
