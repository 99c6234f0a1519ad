// The TypeScript MCP SDK's machine-to-machine client through credgate.
//
// Run by tests/e2e/test_oauth_clients.py (never on its own in CI). Input by environment:
//   MCP_URL        the MCP endpoint behind credgate, e.g. http://127.0.0.1:P/github/mcp
//   ISSUER         credgate's issuer (expectedIssuer)
//   CLIENT_ID      credgate client id
//   CLIENT_SECRET  its secret (AUTH=client_credentials, the default)
//   AUTH           client_credentials | private_key_jwt
//   PRIVATE_KEY    PKCS#8 PEM (AUTH=private_key_jwt), ALG (default ES256)
// Output: one JSON line on stdout:
//   {"ok": true, "whoami": {...}, "http": [[method, url, status], ...], "bearers": [...]}
// or {"ok": false, "error": "..."} with exit status 1. The test bounds the run with a timeout.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider, PrivateKeyJwtProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`missing environment variable ${name}`);
  return v;
};

const httpLog = [];
const bearers = [];

// Records every request the SDK makes (discovery, token, MCP) with its status.
const loggingFetch = async (input, init) => {
  const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
  const method = init?.method ?? (typeof input === 'object' && 'method' in input ? input.method : 'GET');
  const headers = new Headers(init?.headers ?? (typeof input === 'object' && 'headers' in input ? input.headers : undefined));
  const auth = headers.get('authorization') ?? '';
  if (auth.startsWith('Bearer ') && !bearers.includes(auth.slice(7))) bearers.push(auth.slice(7));
  const resp = await fetch(input, init);
  httpLog.push([method, url, resp.status]);
  return resp;
};

async function main() {
  const url = new URL(env('MCP_URL'));
  const issuer = env('ISSUER');
  const mode = env('AUTH', 'client_credentials');
  let authProvider;
  if (mode === 'client_credentials') {
    authProvider = new ClientCredentialsProvider({
      clientId: env('CLIENT_ID'),
      clientSecret: env('CLIENT_SECRET'),
      expectedIssuer: issuer,
    });
  } else if (mode === 'private_key_jwt') {
    authProvider = new PrivateKeyJwtProvider({
      clientId: env('CLIENT_ID'),
      privateKey: env('PRIVATE_KEY'),
      algorithm: env('ALG', 'ES256'),
      expectedIssuer: issuer,
    });
  } else {
    throw new Error(`unknown AUTH ${mode}`);
  }

  const transport = new StreamableHTTPClientTransport(url, { authProvider, fetch: loggingFetch });
  const client = new Client({ name: 'credgate-node-e2e', version: '0.0.0' });
  await client.connect(transport);
  try {
    const result = await client.callTool({ name: 'whoami', arguments: {} });
    if (result.isError) throw new Error(`whoami failed: ${JSON.stringify(result)}`);
    let whoami = result.structuredContent;
    if (!whoami) {
      const text = (result.content ?? []).find((c) => c.type === 'text');
      whoami = text ? JSON.parse(text.text) : null;
    }
    return {
      ok: true,
      whoami,
      protocolVersion: transport.protocolVersion ?? null,
      sessionId: transport.sessionId ?? null,
      http: httpLog,
      bearers,
    };
  } finally {
    await transport.terminateSession().catch(() => {});
    await client.close();
  }
}

main().then(
  (out) => {
    process.stdout.write(JSON.stringify(out) + '\n');
    process.exit(0);
  },
  (err) => {
    process.stdout.write(JSON.stringify({ ok: false, error: String(err?.stack ?? err), http: httpLog }) + '\n');
    process.exit(1);
  },
);
