"""An upstream OAuth provider built on Authlib 1.9 + Flask: the refresh_token
grant with refresh-token rotation, as the "GitHub" credgate refreshes tenants' credentials
against. Runs on a thread inside the pytest process on a free 127.0.0.1 port.

Tests seed grants with `seed()` (what a browser consent would have produced), read what
happened from `refresh_calls`, and switch faults with `mode`:
- "ok": normal behaviour; the old refresh token is revoked on use (rotation), so reusing
  it — a refresh race lost — gets `invalid_grant`, as with real providers;
- "invalid_grant": every refresh is refused with 400 `invalid_grant`;
- "error": the token endpoint answers 503 (provider outage).

`valid_access` is the set of access tokens the resource (the echo upstream's `/guarded`
paths) accepts: tokens the provider issued and that were not revoked.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from flask import Flask, Response
from werkzeug.serving import WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


@dataclass
class _Client(ClientMixin):
    client_id: str
    client_secret: str
    auth_method: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:  # pragma: no cover - no browser flow here
        return ""

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:  # pragma: no cover
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:  # pragma: no cover
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("refresh_token", "client_credentials")


@dataclass
class _Token(TokenMixin):
    client_id: str
    access_token: str
    refresh_token: str | None
    scope: str
    expires_in: int
    issued_at: float = field(default_factory=time.time)
    revoked: bool = False
    user: str = "tenant-user"

    def check_client(self, client: _Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> str:
        return self.user

    def get_client(self) -> _Client:  # pragma: no cover
        raise NotImplementedError


class OAuthProvider:
    def __init__(self, client_id: str, client_secret: str, auth_method: str = "client_secret_post") -> None:
        self.client = _Client(client_id, client_secret, auth_method)
        self.tokens: dict[str, _Token] = {}  # by refresh token
        self.valid_access: set[str] = set()
        self.refresh_calls: list[dict] = []
        self.mode = "ok"
        # Called (no arguments) after a grant was answered and before the answer is sent:
        # lets a test break something in the window between the provider and the store.
        self.after_grant: Callable[[], None] | None = None
        self._lock = threading.Lock()
        provider = self

        app = Flask("credgate-e2e-provider")
        app.config.update(
            OAUTH2_REFRESH_TOKEN_GENERATOR=True,
            OAUTH2_TOKEN_EXPIRES_IN={"refresh_token": 3600},
        )

        class RefreshGrant(grants.RefreshTokenGrant):
            INCLUDE_NEW_REFRESH_TOKEN = True
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def authenticate_refresh_token(self, refresh_token: str) -> _Token | None:
                tok = provider.tokens.get(refresh_token)
                if tok is not None and not tok.revoked:
                    return tok
                return None

            def authenticate_user(self, refresh_token: _Token) -> str:
                return refresh_token.user

            def revoke_old_credential(self, refresh_token: _Token) -> None:
                refresh_token.revoked = True
                provider.valid_access.discard(refresh_token.access_token)

        def query_client(client_id: str) -> _Client | None:
            return provider.client if client_id == provider.client.client_id else None

        def save_token(token: dict, request) -> None:  # noqa: ANN001
            t = _Token(
                client_id=request.client.client_id,
                access_token=token["access_token"],
                refresh_token=token.get("refresh_token"),
                scope=token.get("scope", ""),
                expires_in=int(token.get("expires_in", 3600)),
            )
            if t.refresh_token:
                provider.tokens[t.refresh_token] = t
            provider.valid_access.add(t.access_token)

        server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
        server.register_grant(RefreshGrant)

        class ClientCredentialsGrant(grants.ClientCredentialsGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        server.register_grant(ClientCredentialsGrant)

        @app.post("/oauth/token")
        def token() -> Response:
            from flask import request

            with provider._lock:  # one grant at a time, like a database transaction
                provider.refresh_calls.append(
                    {"form": dict(request.form), "auth": request.headers.get("Authorization"), "at": time.time()}
                )
                if provider.mode == "error":
                    return Response('{"error":"temporarily_unavailable"}', 503, content_type="application/json")
                if provider.mode == "invalid_grant":
                    for t in provider.tokens.values():
                        t.revoked = True
                answer = server.create_token_response()
                if provider.after_grant is not None:
                    provider.after_grant()
                return answer

        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_url = f"{self.url}/oauth/token"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oauth-provider", daemon=True)
        self._thread.start()

    def seed(self, *, valid: bool = True, expires_in: int = 3600, scope: str = "repo") -> tuple[str, str]:
        """A grant as a completed consent would leave it: returns (access_token, refresh_token)."""
        t = _Token(
            client_id=self.client.client_id,
            access_token=f"gho_{secrets.token_urlsafe(24)}",
            refresh_token=f"ghr_{secrets.token_urlsafe(32)}",
            scope=scope,
            expires_in=expires_in,
        )
        self.tokens[t.refresh_token] = t
        if valid:
            self.valid_access.add(t.access_token)
        return t.access_token, t.refresh_token  # type: ignore[return-value]

    def client_credentials_calls(self) -> list[dict]:
        return [c for c in self.refresh_calls if c["form"].get("grant_type") == "client_credentials"]

    def refreshes_of(self, refresh_token: str) -> list[dict]:
        return [c for c in self.refresh_calls if c["form"].get("refresh_token") == refresh_token]

    def close(self) -> None:
        self._server.shutdown()
