//! criterion micro-benchmarks of the MCP policy's per-call work
//! (docs/policy.md): what a judged `tools/call` costs on top of the plain
//! proxied path — the strict parse of its body, the `allowedTools` globs,
//! the `deny` CEL rules — and what filtering one SSE `tools/list` event
//! costs. Run: `cargo bench --bench mcp_policy`.

use std::sync::Arc;

use credgate::mcp::filter::{SseEvents, ToolFilter};
use credgate::mcp::jsonrpc::parse_strict;
use credgate::mcp::rules::{CallFacts, DenyRuleConfig, Rules};
use credgate::mcp::tools;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::hint::black_box;

const CALL: &[u8] = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"transfer","arguments":{"amount":250,"to":"acct-1234","memo":"invoice 2026-118"},"_meta":{"progressToken":7}}}"#;

fn rules(n: usize) -> Rules {
    let all = [
        r#"tool == "transfer" && args.amount > 1000"#,
        r#"tenant == "suspended-tenant""#,
        r#"tool.startsWith("admin_") && !("mcp:admin" in client.scopes)"#,
        r#"has(args.path) && args.path.contains("..")"#,
        r#"tool == "transfer" && args.to.startsWith("ext-")"#,
    ];
    let c: Vec<DenyRuleConfig> = all[..n]
        .iter()
        .map(|w| DenyRuleConfig {
            when: (*w).into(),
            message: "no".into(),
        })
        .collect();
    Rules::compile(&c).expect("rules compile")
}

fn policy(c: &mut Criterion) {
    c.bench_function("mcp/parse_strict_tools_call", |b| {
        b.iter(|| black_box(parse_strict(black_box(CALL)).expect("json")))
    });
    let lenient = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).expect("json");
    c.bench_function("mcp/parse_lenient_tools_call", |b| {
        b.iter(|| black_box(lenient(black_box(CALL))))
    });

    let allowed: Vec<Arc<str>> = ["search_*", "github/list_*", "whoami", "transfer"]
        .iter()
        .map(|s| Arc::from(*s))
        .collect();
    c.bench_function("mcp/allowed_tools_4_globs", |b| {
        b.iter(|| {
            black_box(tools::allows(
                &allowed,
                black_box("github"),
                black_box("transfer"),
            ))
        })
    });

    let args = json!({"amount": 250, "to": "acct-1234", "memo": "invoice 2026-118"});
    let scopes: Vec<Arc<str>> = vec!["mcp".into(), "mcp:write".into()];
    let facts = CallFacts {
        tenant: "acme",
        client_id: "agent-1",
        scopes: &scopes,
        tool: "transfer",
        args: &args,
    };
    for n in [1, 5] {
        let r = rules(n);
        assert!(r.evaluate(&facts).is_none());
        c.bench_function(&format!("mcp/deny_rules_{n}"), |b| {
            b.iter(|| black_box(r.evaluate(black_box(&facts))))
        });
    }

    let filter = ToolFilter {
        allowed: allowed.clone().into(),
        integration: "github".into(),
        max_bytes: 1 << 20,
    };
    let tools: Vec<_> = (0..40)
        .map(|i| json!({"name": format!("tool_{i}"), "description": "does things", "inputSchema": {"type": "object"}}))
        .chain([json!({"name": "search_code", "inputSchema": {"type": "object"}})])
        .collect();
    let event = format!(
        "id: 1\nevent: message\ndata: {}\n\n",
        json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}})
    );
    let note = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
    c.bench_function("mcp/sse_filter_tools_list_41", |b| {
        b.iter(|| {
            black_box(
                SseEvents::default()
                    .push(event.as_bytes(), &filter)
                    .expect("ok"),
            )
        })
    });
    c.bench_function("mcp/sse_filter_notification", |b| {
        b.iter(|| {
            black_box(
                SseEvents::default()
                    .push(note.as_bytes(), &filter)
                    .expect("ok"),
            )
        })
    });
}

criterion_group!(benches, policy);
criterion_main!(benches);
