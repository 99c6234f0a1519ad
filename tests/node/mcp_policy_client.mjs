// The TypeScript MCP SDK against credgate's MCP policy (docs/policy.md).
//
// Run by tests/e2e/test_mcp_policy.py. Input by environment: MCP_URL, ISSUER, CLIENT_ID,
// CLIENT_SECRET, SCOPE (the first token's), ALLOWED_CALL, FORBIDDEN_CALL, STEP_UP_CALL (tool names; each tool is called
// with ARGS_JSON's entry for it). Output: one JSON line on stdout:
//   {"ok": true, "tools": [...], "allowed": {...}, "forbidden": "<error>", "stepUp": {...},
//    "http": [[method, url, status], ...], "scopes": [token scope per token request]}
// or {"ok": false, "error": "..."} with exit status 1. The test bounds the run with a timeout.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

const env = (name) => {
  const v = process.env[name];
  if (v === undefined) throw new Error(`missing environment variable ${name}`);
  return v;
};

const httpLog = [];
const scopes = [];

// The SDK's transport re-authorizes on `403 insufficient_scope`, but (1.32.2) its
// client-credentials token request asks for the provider's configured scope, not the
// challenged one. This provider asks for the challenged scope once one was seen.
class SteppingUpProvider extends ClientCredentialsProvider {
  challenged = undefined;

  prepareTokenRequest(scope) {
    return super.prepareTokenRequest(this.challenged ?? scope);
  }
}
let provider;

const loggingFetch = async (input, init) => {
  const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
  const method = init?.method ?? (typeof input === 'object' && 'method' in input ? input.method : 'GET');
  const resp = await fetch(input, init);
  httpLog.push([method, url, resp.status]);
  const www = resp.headers.get('www-authenticate') ?? '';
  if (resp.status === 403 && www.includes('error="insufficient_scope"')) {
    const m = /scope="([^"]*)"/.exec(www);
    if (m) provider.challenged = m[1];
  }
  if (url.endsWith('/oauth/token') && resp.ok) {
    const body = await resp.clone().json();
    scopes.push(body.scope ?? null);
  }
  return resp;
};

const structured = (result) => {
  if (result.structuredContent) return result.structuredContent;
  const text = (result.content ?? []).find((c) => c.type === 'text');
  return text ? JSON.parse(text.text) : null;
};

async function main() {
  const args = JSON.parse(env('ARGS_JSON'));
  const authProvider = new SteppingUpProvider({
    clientId: env('CLIENT_ID'),
    clientSecret: env('CLIENT_SECRET'),
    expectedIssuer: env('ISSUER'),
    // The scope to start with; a tool needing more is stepped up to on insufficient_scope.
    scope: env('SCOPE'),
  });
  provider = authProvider;
  const transport = new StreamableHTTPClientTransport(new URL(env('MCP_URL')), {
    authProvider,
    fetch: loggingFetch,
  });
  const client = new Client({ name: 'credgate-node-policy', version: '0.0.0' });
  await client.connect(transport);
  try {
    const listed = await client.listTools();
    const tools = listed.tools.map((t) => t.name).sort();
    const allowedName = env('ALLOWED_CALL');
    const allowed = await client.callTool({ name: allowedName, arguments: args[allowedName] ?? {} });
    if (allowed.isError) throw new Error(`${allowedName} failed: ${JSON.stringify(allowed)}`);
    let forbidden = null;
    const forbiddenName = env('FORBIDDEN_CALL');
    try {
      const r = await client.callTool({ name: forbiddenName, arguments: args[forbiddenName] ?? {} });
      forbidden = `unexpectedly succeeded: ${JSON.stringify(r)}`;
    } catch (e) {
      forbidden = `refused: ${String(e?.message ?? e)}`;
    }
    const stepName = env('STEP_UP_CALL');
    const stepUp = await client.callTool({ name: stepName, arguments: args[stepName] ?? {} });
    if (stepUp.isError) throw new Error(`${stepName} failed: ${JSON.stringify(stepUp)}`);
    return {
      ok: true,
      tools,
      allowed: structured(allowed),
      forbidden,
      stepUp: structured(stepUp),
      http: httpLog,
      scopes,
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
    process.stdout.write(JSON.stringify({ ok: false, error: String(err?.stack ?? err), http: httpLog, scopes }) + '\n');
    process.exit(1);
  },
);
