//! Property tests (issue #9) of the admin API's JSON bodies and of the
//! configuration parser (TOML plus `CREDGATE_<SECTION>__<KEY>` overrides).
//!
//! Admin: whatever the body, the answer is 2xx or a docs/errors.md 4xx body, never
//! a 5xx or a panic, and no answer carries an upstream secret that was sent.
//! Config: any text parses or is refused with an error; an accepted config's
//! redacted form (what `check-config` prints) is itself an accepted config.

mod prop_support;

use prop_support::*;
use proptest::prelude::*;

#[test]
fn admin_client_bodies() {
    let rt = runtime();
    let fx = rt.block_on(fixture());
    let seeds = seeds("admin_clients", &[]);
    let id = fx.client_id.clone();
    let targets: Vec<(http::Method, Vec<&str>)> = vec![
        (http::Method::POST, vec![]),
        (http::Method::PUT, vec![&id]),
        (http::Method::POST, vec![&id, "rotate-secret"]),
        (http::Method::POST, vec![&id, "generate-token"]),
        (http::Method::PUT, vec!["cg-does-not-exist"]),
    ];
    let check = |body: &[u8], t: usize| {
        let (method, rest) = &targets[t];
        let (status, text) = rt.block_on(admin_clients(
            &fx.state,
            method.clone(),
            rest,
            body.to_vec(),
        ));
        assert!(
            (200..300).contains(&status) || matches!(status, 400 | 404 | 409 | 413 | 422),
            "{method} {rest:?}: {status} for {:?}: {text}",
            String::from_utf8_lossy(body)
        );
        if status >= 400 {
            assert_spec_error(status, &text);
        }
        if rest.first() == Some(&id.as_str()) && rest.len() == 1 && status == 200 {
            // Keep the fixture's client usable for the other cases.
            let (s, t2) = rt.block_on(admin_clients(
                &fx.state,
                http::Method::PUT,
                rest,
                br#"{"active":true,"tenant":"acme","scopes":["mcp","introspect"]}"#.to_vec(),
            ));
            assert_eq!(s, 200, "{t2}");
        }
    };
    for (_, s) in &seeds {
        for t in 0..targets.len() {
            check(s, t);
        }
    }
    let mut runner = runner(600);
    runner
        .run(&(input(seeds.len()), 0..targets.len()), |(i, t)| {
            check(&materialize(&seeds, &i), t);
            Ok(())
        })
        .unwrap();
    report("admin_clients", seeds.len(), runner.config().cases);
}

#[test]
fn admin_credential_bodies() {
    let rt = runtime();
    let fx = rt.block_on(fixture());
    let seeds = seeds("admin_credentials", &[]);
    let paths: [&[&str]; 4] = [
        &["acme", "github"],
        &["acme", "slack"],
        &["acme", "github", "refresh"],
        &["acme", "nope"],
    ];
    let secrets = ["at-1", "rt-1", "k-1"];
    let check = |body: &[u8], p: usize, put: bool| {
        let method = if put {
            http::Method::PUT
        } else {
            http::Method::POST
        };
        let (status, text) = rt.block_on(admin_credentials(
            &fx.state,
            method.clone(),
            paths[p],
            body.to_vec(),
        ));
        // 503: a refresh asked of an integration with no provider configured.
        assert!(
            (200..300).contains(&status)
                || matches!(status, 400 | 403 | 404 | 405 | 409 | 413 | 422 | 503),
            "{method} {:?}: {status} for {:?}: {text}",
            paths[p],
            String::from_utf8_lossy(body)
        );
        if status >= 400 {
            assert_spec_error(status, &text);
        }
        for s in secrets {
            assert!(
                !text.contains(&format!("\"{s}\"")),
                "answer carries {s}: {text}"
            );
        }
        let (gs, gt) = rt.block_on(admin_credentials(
            &fx.state,
            http::Method::GET,
            paths[p],
            Vec::new(),
        ));
        assert!(matches!(gs, 200 | 404 | 405), "GET after: {gs} {gt}");
        for s in secrets {
            assert!(!gt.contains(&format!("\"{s}\"")), "GET carries {s}: {gt}");
        }
    };
    for (_, s) in &seeds {
        for p in 0..paths.len() {
            check(s, p, true);
        }
    }
    let mut runner = runner(500);
    runner
        .run(
            &(input(seeds.len()), 0..paths.len(), any::<bool>()),
            |(i, p, put)| {
                check(&materialize(&seeds, &i), p, put);
                Ok(())
            },
        )
        .unwrap();
    report("admin_credentials", seeds.len(), runner.config().cases);
}

/// `CREDGATE_*` and `VAULT_*` overrides, with odd values.
fn env_overrides() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        Just("CREDGATE_PROXY__LISTEN"),
        Just("CREDGATE_PROXY__PUBLIC_URL"),
        Just("CREDGATE_PROXY__MAX_BODY_BYTES"),
        Just("CREDGATE_OAUTH__SIGNING_ALG"),
        Just("CREDGATE_OAUTH__MAX_TOKEN_MINUTES"),
        Just("CREDGATE_STORE__BACKEND"),
        Just("CREDGATE_RATE_LIMIT__DEFAULT__BURST"),
        Just("CREDGATE_ROUTES__0__UPSTREAM"),
        Just("CREDGATE_X__Y__Z"),
        Just("CREDGATE___"),
        Just("CREDGATE_PROXY__"),
        Just("VAULT_TIMEOUT"),
        Just("VAULT_MAX_RETRIES"),
        Just("VAULT_ADDR"),
    ];
    let value = prop_oneof![
        Just(String::new()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("true".to_owned()),
        Just("[1, 2]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        Just("127.0.0.1:0".to_owned()),
        Just("http://[::1]:x".to_owned()),
        "[ -~]{0,16}",
    ];
    prop::collection::vec((key.prop_map(str::to_owned), value), 0..3)
}

#[test]
fn config_text_and_env() {
    let seeds = seeds("config", &[]);
    let check = |text: &[u8], env: Vec<(String, String)>| {
        let text = String::from_utf8_lossy(text);
        if let Ok(cfg) = credgate::config::Config::from_toml_with_env(&text, env) {
            let redacted = cfg.to_redacted_toml();
            if let Err(e) = credgate::config::Config::from_toml_with_env(&redacted, Vec::new()) {
                panic!("accepted config prints as an invalid one ({e}):\n{text}\n---\n{redacted}");
            }
        }
    };
    for (name, s) in &seeds {
        let text = String::from_utf8_lossy(s);
        credgate::config::Config::from_toml_with_env(&text, Vec::new())
            .unwrap_or_else(|e| panic!("seed {name} refused: {e}"));
        check(s, Vec::new());
    }
    let mut runner = runner(1500);
    runner
        .run(&(input(seeds.len()), env_overrides()), |(i, env)| {
            check(&materialize(&seeds, &i), env);
            Ok(())
        })
        .unwrap();
    report("config", seeds.len(), runner.config().cases);
}
