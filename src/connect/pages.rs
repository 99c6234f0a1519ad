//! The HTML a person sees: server-rendered, one inline stylesheet, no script,
//! no external asset, every value escaped by [`esc`].

use http::{HeaderValue, Response, StatusCode, header};

use crate::http::{Body, full};

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root{--ink:#1f2933;--muted:#616e7c;--line:#e4e7eb;--bg:#f5f7fa;--brand:#3b5bdb;--ok:#2b8a3e;--warn:#c2410c;--off:#7b8794}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
header{background:#fff;border-bottom:1px solid var(--line)}
.bar{max-width:880px;margin:0 auto;padding:14px 24px;display:flex;align-items:center;gap:10px}
.logo{width:26px;height:26px;border-radius:7px;background:var(--brand);color:#fff;font-weight:700;display:grid;place-items:center;font-size:14px}
.name{font-weight:600;letter-spacing:.2px}
.who{margin-left:auto;color:var(--muted);font-size:13px}
main{max-width:880px;margin:32px auto;padding:0 24px}
.card{background:#fff;border:1px solid var(--line);border-radius:12px;padding:28px;box-shadow:0 1px 2px rgba(16,24,40,.04)}
.narrow{max-width:520px;margin:48px auto}
h1{font-size:22px;margin:0 0 6px}
p{margin:8px 0;color:var(--muted)}
strong{color:var(--ink)}
.btn{display:inline-block;border:1px solid var(--brand);background:var(--brand);color:#fff;border-radius:8px;padding:8px 16px;font:inherit;font-weight:600;cursor:pointer;text-decoration:none}
.btn.ghost{background:#fff;color:var(--ink);border-color:var(--line)}
.btn.danger{background:#fff;color:#b42318;border-color:#f3c4c0}
.btn:focus-visible{outline:3px solid #bac8ff;outline-offset:1px}
.actions{margin-top:22px;display:flex;gap:8px;flex-wrap:wrap}
.notice{border-radius:8px;padding:10px 14px;margin:0 0 18px;background:#ebfbee;color:#1b5e20;border:1px solid #c3e6cb}
.notice.bad{background:#fff4e6;color:#8a3b00;border-color:#ffd8a8}
table{width:100%;border-collapse:collapse;margin-top:18px}
th{white-space:nowrap;text-align:left;font-size:12px;text-transform:uppercase;letter-spacing:.6px;color:var(--muted);font-weight:600;padding:0 12px 10px}
td{padding:14px 12px;border-top:1px solid var(--line);vertical-align:middle}
td.int .iname{font-weight:600;font-size:16px}
td.ops{text-align:right;white-space:nowrap}
td.ops form{display:inline;margin-left:6px}
td.ops .btn{padding:5px 12px;font-size:13px}
.pill{display:inline-block;white-space:nowrap;border-radius:999px;padding:2px 10px;font-size:12px;font-weight:600}
.pill.connected{background:#ebfbee;color:var(--ok)}
.pill.off{background:#f0f2f5;color:var(--off)}
.pill.reauth{background:#fff4e6;color:var(--warn)}
.muted{color:var(--muted);font-size:13px}
td .muted{margin-top:2px}
.icon{width:44px;height:44px;border-radius:50%;display:grid;place-items:center;font-size:22px;margin-bottom:12px;background:#edf2ff;color:var(--brand)}
.icon.ok{background:#ebfbee;color:var(--ok)}
.icon.bad{background:#fff4e6;color:var(--warn)}
footer{max-width:880px;margin:24px auto;padding:0 24px;color:var(--muted);font-size:12px;text-align:center}
"#;

/// A whole page around `body` (already escaped HTML).
pub fn document(title: &str, who: Option<&str>, body: &str, head_extra: &str) -> String {
    let who = who
        .map(|t| {
            format!(
                r#"<span class="who">Tenant <strong>{}</strong></span>"#,
                esc(t)
            )
        })
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">{head_extra}
<title>{title} · credgate</title><style>{STYLE}</style></head>
<body><header><div class="bar"><span class="logo">c</span><span class="name">credgate</span>{who}</div></header>
<main>{body}</main>
<footer>credgate keeps your connections' credentials encrypted and never shows them.</footer>
</body></html>"#,
        title = esc(title),
    )
}

/// A centered one-card page: an icon, a title and a message.
pub fn message(status: StatusCode, title: &str, text: &str, good: bool) -> Response<Body> {
    let icon = if good {
        r#"<div class="icon ok">&#10003;</div>"#
    } else {
        r#"<div class="icon bad">!</div>"#
    };
    let body = format!(
        r#"<div class="card narrow">{icon}<h1>{}</h1><p>{}</p></div>"#,
        esc(title),
        esc(text)
    );
    html(status, document(title, None, &body, ""))
}

/// An HTML answer with the headers every credgate page carries.
pub fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut resp = Response::new(full(page));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The connect page: one button, a POST carrying the link and a CSRF token.
pub fn connect(integration: &str, tenant: &str, link: &str, csrf: &str) -> String {
    let body = format!(
        r#"<div class="card narrow"><div class="icon">&#8599;</div>
<h1>Connect {i}</h1>
<p>Tenant <strong>{t}</strong> is about to connect <strong>{i}</strong>.</p>
<p>You will be sent to {i} to sign in and approve access. credgate then keeps the credential {i} issues, encrypted, and uses it for this tenant's requests.</p>
<form method="post" action="/connect/{i}">
<input type="hidden" name="link" value="{l}">
<input type="hidden" name="csrf" value="{c}">
<div class="actions"><button class="btn" type="submit">Connect {i}</button></div>
</form></div>"#,
        i = esc(integration),
        t = esc(tenant),
        l = esc(link),
        c = esc(csrf),
    );
    document(&format!("Connect {integration}"), Some(tenant), &body, "")
}

/// The page the callback answers when the credential is stored.
pub fn connected(integration: &str, tenant: &str, from_settings: bool) -> String {
    let back = if from_settings {
        r#"<div class="actions"><a class="btn" href="/settings">Back to connections</a></div>"#
    } else {
        ""
    };
    let body = format!(
        r#"<div class="card narrow"><div class="icon ok">&#10003;</div><h1>{i} is connected</h1>
<p>Tenant <strong>{t}</strong> is now connected to <strong>{i}</strong>. You can close this window.</p>{back}</div>"#,
        i = esc(integration),
        t = esc(tenant),
    );
    document(&format!("{integration} connected"), Some(tenant), &body, "")
}

/// One integration's line on the settings page.
pub struct Row {
    pub integration: String,
    /// `connected`, `not connected`, `reauthorization required` or `expired`.
    pub status: &'static str,
    pub expires: String,
    pub updated: String,
    pub can_connect: bool,
    pub connected: bool,
    /// Has a refresh token (else Refresh now could only fail).
    pub refreshable: bool,
    /// Where to connect when credgate cannot (the integration's static `connect_url`).
    pub elsewhere: Option<String>,
}

/// The tenant settings page.
pub fn settings(tenant: &str, rows: &[Row], csrf: &str, notice: Option<(&str, bool)>) -> String {
    let mut table = String::new();
    for r in rows {
        let pill = match r.status {
            "connected" => "connected",
            "not connected" => "off",
            _ => "reauth",
        };
        let i = esc(&r.integration);
        let form = |action: &str, label: &str, class: &str| {
            format!(
                r#"<form method="post" action="/settings/{i}/{action}"><input type="hidden" name="csrf" value="{c}"><button class="btn {class}" type="submit">{label}</button></form>"#,
                c = esc(csrf),
            )
        };
        let mut ops = String::new();
        if r.can_connect {
            let label = if r.connected { "Reconnect" } else { "Connect" };
            ops.push_str(&form(
                "connect",
                label,
                if r.connected { "ghost" } else { "" },
            ));
        }
        if let (false, Some(href)) = (r.can_connect, &r.elsewhere) {
            ops.push_str(&format!(
                r#"<a class="btn ghost" href="{}" rel="noopener noreferrer">Connect at provider</a>"#,
                esc(href)
            ));
        }
        if r.refreshable {
            ops.push_str(&form("refresh", "Refresh now", "ghost"));
        }
        if r.connected {
            ops.push_str(&form("disconnect", "Disconnect", "danger"));
        }
        let detail = if r.connected {
            format!(
                "Expires {} · Last refresh {}",
                esc(&r.expires),
                esc(&r.updated)
            )
        } else {
            "No credential yet".to_owned()
        };
        table.push_str(&format!(
            r#"<tr><td class="int"><div class="iname">{i}</div><div class="muted">{detail}</div></td><td><span class="pill {pill}">{s}</span></td><td class="ops">{ops}</td></tr>"#,
            s = esc(r.status),
        ));
    }
    if rows.is_empty() {
        table.push_str(
            r#"<tr><td colspan="3" class="muted">No integrations are configured.</td></tr>"#,
        );
    }
    let notice = notice
        .map(|(text, good)| {
            format!(
                r#"<div class="notice{}">{}</div>"#,
                if good { "" } else { " bad" },
                esc(text)
            )
        })
        .unwrap_or_default();
    let body = format!(
        r#"{notice}<div class="card"><h1>Connections</h1>
<p>The services this tenant's agents reach through credgate. Connect one to let them act with your account there; disconnect to revoke that access.</p>
<table><thead><tr><th>Integration</th><th>Status</th><th></th></tr></thead>
<tbody>{table}</tbody></table></div>"#
    );
    document("Connections", Some(tenant), &body, "")
}

/// What opening a settings link answers: the session cookie is set, and the
/// browser moves on to `/settings` by a navigation of this page's own, so the
/// SameSite=Strict cookie goes with it even when another site sent the person here.
pub fn opening_settings() -> String {
    let body = r#"<div class="card narrow"><div class="icon ok">&#10003;</div><h1>Signed in</h1>
<p>Taking you to your connections…</p>
<div class="actions"><a class="btn" href="/settings">Open connections</a></div></div>"#;
    document(
        "Signed in",
        None,
        body,
        r#"<meta http-equiv="refresh" content="0;url=/settings">"#,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_escaped() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let page = connect("gh", "<script>alert(1)</script>", "l\"><x", "c");
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("value=\"l&quot;&gt;&lt;x\""));
    }
}
