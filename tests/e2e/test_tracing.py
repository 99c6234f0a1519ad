"""OpenTelemetry traces over OTLP/HTTP (docs/scaling.md), received by a collector in this
file that decodes the protobuf with `opentelemetry-proto`: span names and parentage, the
caller's W3C `traceparent` continued and sent on to the upstream, sampling, no secret in
any span, and an unreachable collector that neither blocks requests nor goes uncounted."""

from __future__ import annotations

import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from echo_upstream import EchoUpstream
from oauth_provider import OAuthProvider
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from support import Credgate, describe, free_port, route, unique

APP_ID = "trace-app"
# Export every 100 ms so tests need not wait for the SDK's 5 s default.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


class OtlpReceiver:
    """POST /v1/traces: decodes ExportTraceServiceRequest, keeps every span and raw body."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.raw: list[bytes] = []
        self.content_types: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                msg = ExportTraceServiceRequest()
                msg.ParseFromString(body)
                receiver.raw.append(body)
                receiver.content_types.append(self.headers.get("Content-Type", ""))
                receiver.requests.append(msg)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[dict[str, str], Span]]:
        """(resource attributes, span) for every span received."""
        out = []
        for req in list(self.requests):
            for rs in req.resource_spans:
                res = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out.extend((res, s) for s in ss.spans)
        return out

    def trace(self, trace_id: bytes) -> list[Span]:
        return [s for _, s in self.spans() if s.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()


def _wait_for(check, timeout: float = 10.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    return check()


def _attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture
def upstream() -> Iterator[EchoUpstream]:
    up = EchoUpstream()
    yield up
    up.close()


def test_request_spans_parentage_propagation_and_no_secrets(
    tmp_path: Path, collector: OtlpReceiver, upstream: EchoUpstream
) -> None:
    provider = OAuthProvider(APP_ID, secrets.token_urlsafe(24))
    upstream.guard(provider.valid_access)
    gate = Credgate(
        tmp_path / "g",
        [route("gh", "/gh", upstream.url)],
        {
            "tracing": {"otlp_endpoint": collector.url},
            "integrations.gh": {"token_url": provider.token_url, "client_id": APP_ID},
        },
        {"GH_CLIENT_SECRET": provider.client.client_secret, **FAST_EXPORT},
    )
    try:
        gate.start()
        tenant = unique("tr")
        # a revoked access token: the upstream answers 401, credgate refreshes and retries
        access, refresh = provider.seed(valid=False)
        gate.put_credential(tenant, "gh", {"access_token": access, "refresh_token": refresh,
                                           "token_type": "Bearer", "expires_in": 3600})
        client = gate.create_client(tenant=tenant, integrations=["gh"])
        token = gate.token(client)

        trace_id, caller_span = secrets.token_bytes(16), secrets.token_bytes(8)
        traceparent = f"00-{trace_id.hex()}-{caller_span.hex()}-01"
        r = gate.proxy("POST", "/gh/guarded/t", token, content=b'{"x": 1}',
                       headers={"traceparent": traceparent, "tracestate": "vendor=abc",
                                "Content-Type": "application/json"})
        assert r.status_code == 200, describe(r)

        names = {"authenticate", "credential lookup", "credential refresh", "upstream"}
        spans = _wait_for(lambda: (lambda s: s if len(s) >= 6 else None)(collector.trace(trace_id)))
        assert spans, f"no complete trace received: {[s.name for _, s in collector.spans()]}"
        by_name: dict[str, list[Span]] = {}
        for s in spans:
            by_name.setdefault(s.name, []).append(s)
        server = by_name.get("POST /gh", [])
        assert len(server) == 1, sorted(by_name)
        root = server[0]
        assert root.kind == Span.SPAN_KIND_SERVER
        assert root.parent_span_id == caller_span, "the caller's traceparent was not continued"
        assert names <= set(by_name), sorted(by_name)
        for name in ("authenticate", "credential lookup", "credential refresh"):
            assert [s.parent_span_id for s in by_name[name]] == [root.span_id], name
        ups = by_name["upstream"]
        assert len(ups) == 2 and all(s.parent_span_id == root.span_id for s in ups), "401 then retry"
        assert all(s.kind == Span.SPAN_KIND_CLIENT for s in ups)
        assert sorted(_attrs(s)["http.response.status_code"] for s in ups) == [200, 401]
        attrs = _attrs(root)
        assert attrs["http.response.status_code"] == 200
        assert attrs["credgate.tenant"] == tenant and attrs["credgate.client_id"] == client.client_id
        assert attrs["http.route"] == "/gh" and attrs["credgate.integration"] == "gh"
        assert attrs["credgate.request_id"] == r.headers["x-request-id"]
        assert _attrs(by_name["credential lookup"][0])["credgate.credential.source"] in ("cache", "store")
        res = collector.spans()[0][0]
        assert res.get("service.name") == "credgate"
        assert all(ct == "application/x-protobuf" for ct in collector.content_types)

        # the upstream got a traceparent naming credgate's upstream span, in the same trace
        seen = [dict((k.lower(), v) for k, v in q["headers"]) for q in upstream.requests if q["path"].endswith("/t")]
        assert len(seen) == 2
        for headers, span in zip(seen, sorted(ups, key=lambda s: s.start_time_unix_nano), strict=True):
            assert headers["traceparent"] == f"00-{trace_id.hex()}-{span.span_id.hex()}-01", headers
            assert headers.get("tracestate") == "vendor=abc"

        # no secret, token or credential anywhere in what was exported
        secrets_seen = [token, client.client_secret, access, refresh, provider.client.client_secret,
                        gate.admin_token, gate.master_key]
        secrets_seen += list(provider.valid_access) + list(provider.tokens)
        raw = b"".join(collector.raw)
        leaked = [s[:6] for s in secrets_seen if s and s.encode() in raw]
        assert not leaked, f"secrets in exported spans: {leaked}"

        # a request without traceparent starts a new sampled trace (sample_ratio defaults to 1.0)
        before = {s.trace_id for _, s in collector.spans()}
        assert gate.proxy("GET", "/gh/plain", token).status_code in (200, 401)
        assert _wait_for(lambda: {s.trace_id for _, s in collector.spans() if s.name == "GET /gh"} - before)
    finally:
        gate.stop()
        upstream.guard(None)
        provider.close()


def test_env_endpoint_and_sample_ratio(tmp_path: Path, collector: OtlpReceiver, upstream: EchoUpstream) -> None:
    gate = Credgate(tmp_path / "g", [route("echo", "/echo", upstream.url)], {"tracing": {"sample_ratio": 0.0}},
                    {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, **FAST_EXPORT})
    try:
        gate.start()
        tenant = unique("smp")
        gate.put_bearer(tenant, "echo", "cred-smp")
        token = gate.token(gate.create_client(tenant=tenant, integrations=["echo"]))
        # ratio 0: a new trace is not recorded, but its context still reaches the upstream
        for _ in range(5):
            assert gate.proxy("GET", "/echo/unsampled", token).status_code == 200
        got = [dict((k.lower(), v) for k, v in q["headers"]) for q in upstream.requests
               if q["path"].endswith("/unsampled")]
        assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", h.get("traceparent", "")) for h in got), got
        # a caller's sampled flag is followed
        trace_id = secrets.token_bytes(16)
        r = gate.proxy("GET", "/echo/sampled", token,
                       headers={"traceparent": f"00-{trace_id.hex()}-{secrets.token_hex(8)}-01"})
        assert r.status_code == 200
        assert _wait_for(lambda: collector.trace(trace_id)), "sampled caller trace not exported via the env endpoint"
        assert not [s for _, s in collector.spans() if s.trace_id != trace_id], "ratio 0 recorded new traces"
    finally:
        gate.stop()


def test_unreachable_collector_neither_blocks_nor_goes_uncounted(tmp_path: Path, upstream: EchoUpstream) -> None:
    # A collector that accepts connections and never answers...
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    # ...and one that refuses them.
    refused = free_port()
    try:
        for endpoint, reason in ((f"http://127.0.0.1:{silent.getsockname()[1]}", None),
                                 (f"http://127.0.0.1:{refused}", "export_failed")):
            gate = Credgate(tmp_path / unique("g"), [route("echo", "/echo", upstream.url)],
                            {"tracing": {"otlp_endpoint": endpoint}}, FAST_EXPORT)
            try:
                gate.start()
                tenant = unique("blk")
                gate.put_bearer(tenant, "echo", "cred")
                token = gate.token(gate.create_client(tenant=tenant, integrations=["echo"]))
                with httpx.Client(timeout=5, trust_env=False) as c:
                    times = []
                    for _ in range(40):
                        t0 = time.monotonic()
                        r = c.get(f"{gate.url}/echo/x", headers={"Authorization": f"Bearer {token}"})
                        times.append(time.monotonic() - t0)
                        assert r.status_code == 200
                times.sort()
                assert times[len(times) // 2] < 0.2 and times[-1] < 1.0, times
                if reason:
                    def dropped() -> float:
                        text = httpx.get(f"{gate.ops_url}/metrics", timeout=5).text
                        m = re.search(rf'^credgate_trace_spans_dropped_total{{reason="{reason}"}} (\S+)$', text, re.M)
                        return float(m.group(1)) if m else 0.0
                    assert _wait_for(lambda: dropped() > 0), "failed exports not counted"
            finally:
                gate.stop()
    finally:
        silent.close()
