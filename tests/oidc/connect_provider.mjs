// A real OAuth provider for credgate's connect tests (tests/e2e/test_connect*.py):
// oidc-provider (pinned in package.json) with its own development login and consent
// pages, PKCE required for every authorization request, refresh-token rotation,
// RFC 7009 revocation and RFC 7662 introspection. In-memory.
//
//   node connect_provider.mjs '<json>'
//     json: {"clientSecret": "...", "upstreamSecret": "...", "redirectUris": ["..."]}
//
// Listens on a free 127.0.0.1 port and prints one line `READY {"issuer": ..., "port": ...}`.
// The issuer is `http://localhost:<port>`, so a browser sees the provider as another site
// than credgate on 127.0.0.1 (the redirect back to credgate is a cross-site navigation).
// Clients: `credgate` (client_secret_post, authorization_code + refresh_token) and
// `upstream` (client_secret_basic; introspection only, as a resource server would).
// Test side channel (127.0.0.1 only):
//   GET  /_test/stats -> {tokenRequests: [{grant_type, status, error, errorDetail}], revocations: n}
//   POST /_test/drop-access {token} -> {} destroys one access token and nothing else (the
//        RFC 7009 endpoint would revoke the refresh tokens of its grant too), as when an
//        access token expires or an API forgets it.

import http from 'node:http';
import Provider from 'oidc-provider';

const args = JSON.parse(process.argv[2] ?? '{}');
if (!args.clientSecret || !args.upstreamSecret || !Array.isArray(args.redirectUris)) {
  console.error("usage: node connect_provider.mjs '{\"clientSecret\",\"upstreamSecret\",\"redirectUris\"}'");
  process.exit(2);
}

const stats = { tokenRequests: [], revocations: 0 };
const server = http.createServer();
await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
const { port } = server.address();
const issuer = `http://localhost:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'credgate',
      client_secret: args.clientSecret,
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: args.redirectUris,
    },
    {
      client_id: 'upstream',
      client_secret: args.upstreamSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  scopes: ['openid', 'offline_access', 'repo'],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  features: {
    devInteractions: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true },
  },
  ttl: {
    AccessToken: () => 3600,
    RefreshToken: () => 14 * 24 * 3600,
    Grant: () => 14 * 24 * 3600,
    Interaction: () => 600,
    Session: () => 3600,
    IdToken: () => 3600,
    AuthorizationCode: () => 60,
  },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return { sub: id }; } };
  },
});
provider.proxy = false;
provider.on('server_error', (ctx, err) => { console.error('server_error', err); });
provider.on('grant.error', (ctx, err) => {
  console.error('grant.error', err?.error, err?.error_detail ?? err?.message);
  ctx.state.errorDetail = err?.error_detail ?? err?.message;
});

provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token' && ctx.method === 'POST') {
    stats.tokenRequests.push({
      grant_type: ctx.oidc?.params?.grant_type ?? null,
      status: ctx.status,
      error: ctx.body?.error ?? null,
      errorDetail: ctx.state.errorDetail ?? null,
    });
  }
  if (ctx.path === '/token/revocation' && ctx.method === 'POST') stats.revocations += 1;
});

const readJson = async (req) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString() || '{}');
};

const callback = provider.callback();
server.on('request', async (req, res) => {
  if (req.url === '/_test/stats' && req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats));
    return;
  }
  if (req.url === '/_test/drop-access' && req.method === 'POST') {
    const { token } = await readJson(req);
    const at = await provider.AccessToken.find(token);
    if (at) await at.destroy();
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ dropped: !!at }));
    return;
  }
  callback(req, res);
});

console.log(`READY ${JSON.stringify({ issuer, port })}`);
