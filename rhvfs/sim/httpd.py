"""The simulated engine's HTTPS front end: TLS, keep-alive, auth, routing, faults.

Owns the socket side of the engine: a `ThreadingHTTPServer` (one thread per
connection, HTTP/1.1 keep-alive, TLS handshake in the connection's thread),
the SSO token/logout endpoints, Bearer and Basic authentication with the
engine's 401 rules and token expiry, the CA download URL, the admin endpoints' token check,
engine fault injection (5xx / delay on matching calls), the emulated network
latency of a remote engine, and the per-(method, path template) call counter
the admin endpoint shows. Responses leave on TCP_NODELAY sockets, headers and
body in one write up to 256 KiB (a header write then a body write met Nagle's
algorithm and the client's delayed ACK: ~40 ms per call). Resources are
declared by the `api_*` modules as tables of `Route`s (method, path template,
plain handler function taking an explicit context and the request); the
`Router` binds each table to its context. This module knows nothing about
the resources and never touches storage.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import hmac
import json
import logging
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from rhvfs.sim import xmlio
from rhvfs.sim.faults import Faults

log = logging.getLogger(__name__)

API_PREFIX = xmlio.API
SSO_TOKEN = "/ovirt-engine/sso/oauth/token"
SSO_LOGOUT = "/ovirt-engine/services/sso-logout"
PKI_RESOURCE = "/ovirt-engine/services/pki-resource"
ADMIN_PREFIX = "/rhvfs-sim"
XML = "application/xml;charset=UTF-8"
JSON = "application/json;charset=UTF-8"


class HttpError(Exception):
    """Raised by handlers: becomes an HTTP error answer with a `<fault>` body.

    `reason=None` sends an empty body (the engine's usual 404).
    """

    def __init__(self, status: int, reason: str | None = None, detail: str = "") -> None:
        super().__init__(f"{status} {reason or ''} {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


def not_found(what: str = "") -> HttpError:
    return HttpError(404, None, what)


def conflict(detail: str) -> HttpError:
    return HttpError(409, "Operation Failed", f"[{detail}]")


def bad_request(detail: str, reason: str = "Incomplete parameters") -> HttpError:
    return HttpError(400, reason, detail)


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, str] = dataclasses.field(default_factory=dict)

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.query.get(name)
        if value is None:
            return default
        return value.lower() in ("true", "1", "yes", "")

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclasses.dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = XML
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def xml(body: bytes, status: int = 200, **headers: str) -> Response:
    return Response(status=status, body=body, content_type=XML, headers=dict(headers))


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(obj).encode(), content_type=JSON)


Handler = Callable[..., Response]


@dataclasses.dataclass(frozen=True)
class Route:
    """One entry of a resource's route table.

    `path` is a template like `/vms/{vm}/nics/{nic}` (relative to the API
    root); `handler(context, req, **params)` gets the table's context (the
    simulated engine), the request, and one keyword argument per `{param}`.
    """

    method: str
    path: str
    handler: Handler


class Router:
    """Path templates like `/vms/{vm}/snapshots/{snap}` relative to the API root."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler, str]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        """Route to `handler(req, **params)`."""
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template.rstrip("/"))
        self._routes.append((method, re.compile(f"^{pattern}/?$"), handler, template))

    def include(self, routes: Iterable[Route], context: object) -> None:
        """Add a route table whose handlers take `context` first."""
        for route in routes:
            self.add(route.method, route.path, functools.partial(route.handler, context))

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        handler, params, _ = self.match(method, path)
        return handler, params

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str], str]:
        """(handler, path params, the route's template); 405 or 404 as `HttpError`."""
        allowed = False
        for route_method, pattern, handler, template in self._routes:
            m = pattern.match(path)
            if m is None:
                continue
            if route_method != method:
                allowed = True
                continue
            return handler, m.groupdict(), template
        if allowed:
            raise HttpError(405, "Method Not Allowed", f"{method} {path}")
        raise not_found(path)


# The counter's key for API paths no route matches (404/405 answers).
NO_ROUTE = "(no route)"


class CallCounter:
    """Engine requests by (method, path template), for tests and benches (thread-safe).

    API calls count under their route template relative to the API root
    (`GET /vms/{vm}/nics`), the SSO and CA endpoints under their path,
    unrouted API paths under `NO_ROUTE`. Every request the engine answers
    counts, refused ones (401, faults) included; admin calls never do.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, method: str, template: str) -> None:
        with self._lock:
            self._counts[(method, template)] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> dict[tuple[str, str], int]:
        """Zero every count; returns the counts before."""
        with self._lock:
            counts = dict(self._counts)
            self._counts.clear()
            return counts


# The engine's SSO defaults (engine-config): a token dies after
# UserSessionTimeOutInterval = 30 minutes without a request, and at the latest
# UserSessionHardLimit = 600 minutes after the login, however busy it is.
DEFAULT_TOKEN_TTL_S = 30 * 60.0
DEFAULT_TOKEN_LIFETIME_S = 600 * 60.0


@dataclasses.dataclass
class _Token:
    issued: float  # Auth's clock (monotonic seconds)
    used: float


class Auth:
    """One user (`admin@internal`), SSO tokens, and the admin endpoints' token.

    Tokens expire as the engine's do: after `token_ttl_s` seconds without an
    API request (each request renews it) or `token_lifetime_s` seconds after
    the login, whichever comes first; an expired token is forgotten and the
    request gets the engine's 401, on which the SDK logs in again once.
    `clock` is monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        *,
        username: str,
        password: str,
        admin_token: str,
        token_ttl_s: float = DEFAULT_TOKEN_TTL_S,
        token_lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token_ttl_s <= 0 or token_lifetime_s <= 0:
            raise ValueError("token lifetimes must be positive")
        self.username = username
        self._password = password
        self.admin_token = admin_token
        self.token_ttl_s = token_ttl_s
        self.token_lifetime_s = token_lifetime_s
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        self._issued: list[str] = []  # every token ever handed out, for leak checks
        self._expired = 0
        self._lock = threading.Lock()

    def check_password(self, username: str, password: str) -> bool:
        user_ok = username.lower() == self.username.lower()
        return user_ok and hmac.compare_digest(password.encode(), self._password.encode())

    def new_token(self) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            # Kept until logged out or presented after it expired (a few hundred
            # bytes per login), so every refusal of an expired token is counted.
            self._tokens[token] = _Token(issued=now, used=now)
            self._issued.append(token)
        return token

    def issued_tokens(self) -> list[str]:
        """Every SSO token or session id handed out so far, revoked ones included."""
        with self._lock:
            return list(self._issued)

    def _expired_at(self, t: _Token, now: float) -> bool:
        return now - t.used >= self.token_ttl_s or now - t.issued >= self.token_lifetime_s

    def expires_at_ms(self) -> int:
        """The `exp` of a token issued now: milliseconds since the epoch (wall clock)."""
        return int((time.time() + self.token_lifetime_s) * 1000)

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def valid_token(self, token: str) -> bool:
        """Whether `token` is live; a live token is renewed, an expired one forgotten."""
        now = self._clock()
        with self._lock:
            t = self._tokens.get(token)
            if t is None:
                return False
            if self._expired_at(t, now):
                del self._tokens[token]
                self._expired += 1
                log.info(
                    "request with an expired SSO token (unused for %.1f s, issued %.1f s ago; "
                    "ttl %.0f s, lifetime %.0f s): 401",
                    now - t.used,
                    now - t.issued,
                    self.token_ttl_s,
                    self.token_lifetime_s,
                )
                return False
            t.used = now
            return True

    def revoke_all(self) -> None:
        """Forget every SSO token (tests: forces the SDK's re-login path)."""
        with self._lock:
            self._tokens.clear()

    def stats(self) -> dict[str, float | int]:
        """For tests: tokens issued, requests refused for an expired token, live tokens,
        and the two lifetimes."""
        with self._lock:
            return {
                "issued": len(self._issued),
                "expired": self._expired,
                "live": len(self._tokens),
                "token_ttl_s": self.token_ttl_s,
                "token_lifetime_s": self.token_lifetime_s,
            }


class App:
    """Dispatch one request: special endpoints, auth, faults, then the router."""

    def __init__(
        self,
        *,
        router: Router,
        admin_router: Router,
        auth: Auth,
        faults: Faults,
        ca_file: Path,
        calls: CallCounter | None = None,
        latency_s: float = 0.0,
    ) -> None:
        if latency_s < 0:
            raise ValueError("latency must not be negative")
        self.router = router
        self.admin_router = admin_router
        self.auth = auth
        self.faults = faults
        self.ca_file = ca_file
        self.calls = calls if calls is not None else CallCounter()
        # Added to every engine request (not to admin calls): a remote engine's round trip.
        self.latency_s = latency_s

    def handle(self, req: Request) -> Response:
        try:
            if req.path.startswith(ADMIN_PREFIX + "/"):
                return self._admin(req)
            if self.latency_s:
                time.sleep(self.latency_s)
            self.calls.add(req.method, self._template(req))
            fault = self.faults.match(req.method, req.path)
            if fault is not None:
                if fault.delay_s:
                    time.sleep(fault.delay_s)
                if fault.status:
                    raise HttpError(fault.status, "Operation Failed", "injected fault")
            if req.path == SSO_TOKEN or req.path == SSO_TOKEN + "-http-auth":
                return self._sso_token(req)
            if req.path == SSO_LOGOUT:
                return self._sso_logout(req)
            if req.path == PKI_RESOURCE:
                return self._pki(req)
            if req.path == API_PREFIX or req.path.startswith(API_PREFIX + "/"):
                return self._api(req)
            raise not_found(req.path)
        except HttpError as e:
            return self._error(e)
        except Exception as e:
            log.exception("%s %s failed", req.method, req.path)
            return self._error(HttpError(500, "Operation Failed", str(e)))

    def _template(self, req: Request) -> str:
        """The counter's key: the API route template, `NO_ROUTE`, or the plain path."""
        if req.path != API_PREFIX and not req.path.startswith(API_PREFIX + "/"):
            return req.path
        try:
            return self.router.match(req.method, req.path[len(API_PREFIX) :] or "/")[2]
        except HttpError:
            return NO_ROUTE

    @staticmethod
    def _error(e: HttpError) -> Response:
        if e.reason is None:
            return Response(status=e.status, body=b"")
        return xml(xmlio.fault(e.reason, e.detail), status=e.status)

    def _sso_token(self, req: Request) -> Response:
        form = dict(parse_qsl(req.body.decode(errors="replace")))
        if form.get("grant_type") != "password":
            return json_response(
                {"error": "unsupported_grant_type", "error_description": "Unsupported grant type"},
                status=400,
            )
        if form.get("scope", "ovirt-app-api") != "ovirt-app-api":
            return json_response(
                {"error": "invalid_scope", "error_description": "The scope is not valid"},
                status=400,
            )
        username = form.get("username", "")
        if not self.auth.check_password(username, form.get("password", "")):
            log.info("SSO login failed for %s", username)
            return json_response(
                {
                    "error_code": "access_denied",
                    "error": f"Cannot authenticate user '{username}': "
                    "The username or password is incorrect..",
                },
                status=400,
            )
        token = self.auth.new_token()
        exp = self.auth.expires_at_ms()
        return json_response(
            {
                "access_token": token,
                "scope": "ovirt-app-api",
                "exp": str(exp),
                "token_type": "bearer",
            }
        )

    def _sso_logout(self, req: Request) -> Response:
        form = dict(parse_qsl(req.body.decode(errors="replace")))
        token = form.get("token")
        if token:
            self.auth.revoke(token)
        return json_response({})

    def _pki(self, req: Request) -> Response:
        if req.query.get("resource") != "ca-certificate":
            raise not_found("unknown resource")
        return Response(body=self.ca_file.read_bytes(), content_type="application/x-x509-ca-cert")

    def _authenticated(self, req: Request) -> tuple[bool, str | None]:
        """(ok, new session id): Bearer token, Basic credentials, or a JSESSIONID cookie.

        Basic with `Prefer: persistent-auth` opens a session kept in a cookie,
        as the engine's API filter does; without it nothing is kept."""
        value = req.headers.get("authorization", "")
        scheme, _, cred = value.partition(" ")
        if scheme.lower() == "bearer":
            return self.auth.valid_token(cred.strip()), None
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(cred.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False, None
            if not self.auth.check_password(user, password):
                return False, None
            if "persistent-auth" in req.headers.get("prefer", ""):
                return True, self.auth.new_token()
            return True, None
        for part in req.headers.get("cookie", "").split(";"):
            name, _, session = part.strip().partition("=")
            if name == "JSESSIONID" and session:
                return self.auth.valid_token(session), None
        return False, None

    def _api(self, req: Request) -> Response:
        ok, session = self._authenticated(req)
        if not ok:
            return Response(
                status=401, body=b"", headers={"WWW-Authenticate": 'Bearer realm="oVirt"'}
            )
        sub = req.path[len(API_PREFIX) :] or "/"
        handler, params = self.router.resolve(req.method, sub)
        req.params = params
        resp: Response = handler(req, **params)
        if session is not None:
            resp.headers["Set-Cookie"] = (
                f"JSESSIONID={session}; Path=/ovirt-engine/api; Secure; HttpOnly"
            )
        return resp

    def _admin(self, req: Request) -> Response:
        value = req.headers.get("authorization", "")
        scheme, _, cred = value.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            cred.strip().encode(), self.auth.admin_token.encode()
        ):
            return Response(status=401, body=b"")
        handler, params = self.admin_router.resolve(req.method, req.path[len(ADMIN_PREFIX) :])
        req.params = params
        return handler(req, **params)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EngineServer
    timeout = 600
    # A buffered wfile: the status line, headers and body of a response up to
    # this size leave in one write (one TLS record train), not two.
    wbufsize = 256 * 1024

    def setup(self) -> None:
        sock = self.request
        # Responses go out in one write, but the SSO form POST and TLS records
        # still make small segments: never let Nagle wait for the client's ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(30)
            sock.do_handshake()
        super().setup()

    def _dispatch(self) -> None:
        start = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        req = Request(
            method=self.command,
            path=url.path.rstrip("/") or "/",
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        resp = self.server.app.handle(req)
        self.send_response(resp.status)
        if resp.body or resp.status not in (204, 304):
            self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if resp.body and self.command != "HEAD":
            self.wfile.write(resp.body)
        # Headers and body leave together (see `wbufsize`).
        self.wfile.flush()
        level = logging.DEBUG if self.command == "GET" and resp.status < 400 else logging.INFO
        log.log(
            level,
            "%s %s -> %d (%.3f s)",
            self.command,
            url.path,
            resp.status,
            time.monotonic() - start,
        )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class EngineServer(ThreadingHTTPServer):
    """HTTPS (or plain HTTP when `ssl_context` is None) server for one `App`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        app: App,
        *,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.app = app
        super().__init__(address, _RequestHandler)
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="engine-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def make_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx
