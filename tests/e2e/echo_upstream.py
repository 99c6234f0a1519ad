"""A tiny HTTP upstream that reports exactly what reached it, for header-hygiene and
streaming tests. Stdlib only, HTTP/1.1, runs on a thread inside the pytest process.

- any path, any method: 200 JSON ``{method, path, query, headers: [[name, value], ...],
  body, body_len, body_sha256, peer}``; the response also carries ``Mcp-Session-Id``, ``MCP-Protocol-Version``
  and hop-by-hop headers so a test can check what the proxy passes back.
- paths under ``/guarded``: 401 unless the bearer token is in the set given to ``guard()``
  (an OAuth provider's live access tokens), like a real API whose token was revoked.
- ``GET .../sse?n=N&delay=S&id=ID``: ``text/event-stream`` with N events spaced S seconds,
  chunked; each event's data is ``{"i": i, "sent": <unix time>}``. What was sent, and
  whether the client went away, is recorded in ``EchoUpstream.streams[ID]``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

UPSTREAM_SESSION_ID = "upstream-session-7f3a"


def read_body(req: BaseHTTPRequestHandler) -> bytes:
    """A request's whole body: chunked (trailers skipped) or by Content-Length."""
    if "chunked" in req.headers.get("Transfer-Encoding", "").lower():
        out = bytearray()
        while True:
            size_line = req.rfile.readline(1024).split(b";", 1)[0].strip()
            size = int(size_line or b"0", 16)
            if size == 0:
                # trailers until an empty line
                while req.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += req.rfile.read(size)
            req.rfile.readline(8)
    length = int(req.headers.get("Content-Length") or 0)
    return req.rfile.read(length) if length else b""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def _handle(self) -> None:
        body = read_body(self)
        parts = urlsplit(self.path)
        record = {
            "method": self.command,
            "path": parts.path,
            "raw_target": self.path,
            "query": parts.query,
            "headers": [[k, v] for k, v in self.headers.items()],
            # small bodies verbatim; large ones by length and digest
            "body": body.decode("utf-8", "replace") if len(body) <= 65536 else None,
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "peer": self.client_address[0],
            "http_version": self.request_version,
        }
        self.server.requests.append(record)
        guard = self.server.valid_bearers
        if guard is not None and parts.path.startswith("/guarded"):
            auth = self.headers.get("Authorization", "")
            if not (auth.startswith("Bearer ") and auth[7:] in guard):
                record["rejected"] = True
                payload = b'{"message":"Bad credentials"}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
        if parts.path.endswith("/sse") and self.command == "GET":
            self._sse(parse_qs(parts.query))
            return
        payload = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Mcp-Session-Id", UPSTREAM_SESSION_ID)
        self.send_header("MCP-Protocol-Version", "2025-11-25")
        # hop-by-hop headers a proxy must not pass back to the caller
        self.send_header("Connection", "keep-alive, X-Upstream-Private")
        self.send_header("X-Upstream-Private", "must-not-reach-caller")
        self.send_header("Keep-Alive", "timeout=77")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _sse(self, q: dict[str, list[str]]) -> None:
        n = int(q.get("n", ["5"])[0])
        delay = float(q.get("delay", ["0.5"])[0])
        stream_id = q.get("id", ["default"])[0]
        state = {"sent": [], "disconnected": False, "done": False, "last_event_id": self.headers.get("Last-Event-ID")}
        self.server.streams[stream_id] = state
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i in range(n):
                if i:
                    time.sleep(delay)
                now = time.time()
                event = f"id: {i}\nevent: tick\ndata: {json.dumps({'i': i, 'sent': now})}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                state["sent"].append(now)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            state["done"] = True
        except (BrokenPipeError, ConnectionResetError, OSError):
            state["disconnected"] = True
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int]) -> None:
        super().__init__(addr, _Handler)
        self.requests: list[dict] = []
        self.streams: dict[str, dict] = {}
        self.valid_bearers: set[str] | None = None


class EchoUpstream:
    """Start with ``EchoUpstream()``; ``.url`` is its base URL; ``.close()`` stops it."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0))
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="echo-upstream", daemon=True)
        self._thread.start()

    @property
    def streams(self) -> dict[str, dict]:
        return self._server.streams

    @property
    def requests(self) -> list[dict]:
        return self._server.requests

    def guard(self, valid_bearers: set[str] | None) -> None:
        """Paths under ``/guarded`` answer 401 unless the bearer token is in ``valid_bearers``."""
        self._server.valid_bearers = valid_bearers

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
