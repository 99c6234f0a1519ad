//! Scale: resident memory with 1k, 10k and 100k tenants cached and
//! rate-limited, and the refresh scheduler with 100k stored credentials.
//! Prints `JSON {…}` lines for bench/report.py. Not a criterion bench.
//!
//! `cargo bench --bench scale`            memory, embedded store on tmpfs
//! `cargo bench --bench scale -- --vault` scheduler against the Vault at
//!   VAULT_ADDR (VAULT_TOKEN; Transit need not be mounted: records are
//!   written as the scheduler reads them, without encryption)

mod support;

use std::sync::Arc;
use std::time::Instant;

use credgate::refresh::schedule;
use credgate::store::Cas;
use serde_json::json;

// The allocator the credgate binary uses (src/main.rs), so resident memory
// is what a deployment sees.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STEPS: &[usize] = &[1_000, 10_000, 100_000];
const STORED: usize = 100_000;
const BEFORE_SECS: i64 = 300;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks harness=false benches too
    }
    let vault = args.iter().any(|a| a == "--vault");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.iter().any(|a| a == "--phases") {
        rt.block_on(phases(10_000));
    } else if vault {
        rt.block_on(scheduler_vault());
    } else {
        rt.block_on(memory());
    }
}

/// Fills every per-tenant structure the hot path keeps, one tenant at a time,
/// and reports VmRSS at each step.
async fn memory() {
    // tmpfs: the store's per-write fsync is not what is measured here.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let state = support::state(support::config(dir.path(), &support::embedded(dir.path()))).await;
    let live = state.live.load();
    let route = live.routes.find(None, "/github/mcp").expect("route");
    let integration: Arc<str> = support::INTEGRATION.into();
    let baseline = support::rss_kib();
    let mut done = 0;
    for &n in STEPS {
        while done < n {
            let tenant = format!("tenant-{done}");
            let (id, secret) = support::client(&state, &tenant).await;
            support::credential(&state, &tenant).await;
            let token = support::token(&state, &id, &secret).await;
            // What one proxied request leaves behind for this tenant.
            let p = state
                .authority
                .authenticate(
                    &support::bearer_headers(&token),
                    None,
                    Some(&route.resource),
                    &route.resource_metadata,
                )
                .expect("authenticated");
            let tenant: Arc<str> = tenant.into();
            live.rate_limits
                .check(&tenant, &p.client_id)
                .expect("not limited");
            state
                .credentials
                .get(&tenant, &integration)
                .await
                .expect("credential");
            done += 1;
        }
        let rss = support::rss_kib();
        println!(
            "JSON {}",
            json!({
                "kind": "memory", "tenants": n,
                "rss_mib": rss as f64 / 1024.0,
                "delta_mib": rss.saturating_sub(baseline) as f64 / 1024.0,
                "baseline_mib": baseline as f64 / 1024.0,
                "rate_limited_tenants": live.rate_limits.tracked_tenants(),
            })
        );
    }
    scheduler(&state, "embedded", 0.0).await;
}

/// Where the per-tenant memory goes: each step done for `n` tenants before
/// the next, with the RSS growth of each.
async fn phases(n: usize) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let state = support::state(support::config(dir.path(), &support::embedded(dir.path()))).await;
    let live = state.live.load();
    let route = live.routes.find(None, "/github/mcp").expect("route");
    let integration: Arc<str> = support::INTEGRATION.into();
    let tenants: Vec<Arc<str>> = (0..n).map(|i| format!("tenant-{i}").into()).collect();
    let mut last = support::rss_kib();
    let mut report = |phase: &str| {
        let now = support::rss_kib();
        println!(
            "JSON {}",
            json!({"kind": "phase", "phase": phase, "tenants": n,
                   "per_tenant_bytes": (now.saturating_sub(last) * 1024) as f64 / n as f64})
        );
        last = now;
    };
    let mut clients = Vec::new();
    for t in &tenants {
        clients.push(support::client(&state, t).await);
    }
    report("client created (registry + store)");
    for t in &tenants {
        support::credential(&state, t).await;
    }
    report("credential stored (store)");
    let mut tokens = Vec::new();
    for (id, secret) in &clients {
        tokens.push(support::token(&state, id, secret).await);
    }
    report("token issued");
    let mut principals = Vec::new();
    for token in &tokens {
        principals.push(
            state
                .authority
                .authenticate(
                    &support::bearer_headers(token),
                    None,
                    Some(&route.resource),
                    &route.resource_metadata,
                )
                .expect("authenticated"),
        );
    }
    drop(tokens);
    report("token validated (validation cache)");
    for (t, p) in tenants.iter().zip(&principals) {
        live.rate_limits
            .check(t, &p.client_id)
            .expect("not limited");
    }
    report("rate-limit bucket");
    for t in &tenants {
        state
            .credentials
            .get(t, &integration)
            .await
            .expect("credential");
    }
    report("credential cached");
}

/// Writes STORED credential records straight to Vault KV (as the scheduler
/// reads them), then times a rescan and a tick.
async fn scheduler_vault() {
    let addr = std::env::var("VAULT_ADDR").expect("VAULT_ADDR");
    let dir = tempfile::tempdir().expect("tempdir");
    let section = format!("backend = \"vault\"\n[store.vault]\naddress = \"{addr}\"");
    let state = support::state(support::config(dir.path(), &section)).await;
    let expires = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..STORED {
        let store = state.store.clone();
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let expires = expires.clone();
        tasks.spawn(async move {
            let data = json!({"accessToken": "vault:v1:bench", "refreshToken": "vault:v1:bench",
                "expiresAt": expires, "tokenType": "Bearer", "integration": "github"});
            let serde_json::Value::Object(data) = data else {
                unreachable!()
            };
            let metadata = [
                ("autoRefresh", "true"),
                ("status", "active"),
                ("integration", "github"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            store
                .write(&format!("tenant-{i}/github"), data, metadata, Cas::Any)
                .await
                .expect("write");
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let seed_s = started.elapsed().as_secs_f64();
    scheduler(&state, "vault", seed_s).await;
}

async fn scheduler(state: &credgate::state::AppState, backend: &str, seed_s: f64) {
    let index = state.credentials.refresher().due();
    let t = Instant::now();
    let n = schedule::scan(state.store.as_ref(), index, BEFORE_SECS)
        .await
        .expect("scan");
    let scan_ms = t.elapsed().as_secs_f64() * 1e3;
    let credentials = state.credentials.clone();
    let mut ticks = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let due = schedule::tick(&credentials, 8).await;
        ticks.push((t.elapsed().as_secs_f64() * 1e6, due));
    }
    ticks.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!(
        "JSON {}",
        json!({
            "kind": "tick", "backend": backend, "credentials": n, "indexed": index.len(),
            "scan_ms": scan_ms, "tick_us": ticks[ticks.len() / 2].0, "due": ticks[0].1,
            "seed_s": seed_s,
        })
    );
}
