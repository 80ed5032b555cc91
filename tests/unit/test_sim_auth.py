"""The simulated engine's SSO tokens: they expire as the engine's do (idle and hard limits),
requests with them get the engine's 401, and the simulator's files are private."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import pytest

from rhvfs.sim import _proc
from rhvfs.sim.cli import _parser
from rhvfs.sim.faults import Faults
from rhvfs.sim.httpd import (
    API_PREFIX,
    DEFAULT_TOKEN_LIFETIME_S,
    DEFAULT_TOKEN_TTL_S,
    App,
    Auth,
    Request,
    Response,
    Router,
)
from rhvfs.sim.serve import ServeOptions, _make_private


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _auth(clock: Clock, *, ttl: float = 10.0, lifetime: float = 100.0) -> Auth:
    return Auth(
        username="admin@internal",
        password="pw",
        admin_token="admin",
        token_ttl_s=ttl,
        token_lifetime_s=lifetime,
        clock=clock,
    )


def test_defaults_are_the_engines() -> None:
    # engine-config: UserSessionTimeOutInterval = 30 (minutes), UserSessionHardLimit = 600.
    assert (DEFAULT_TOKEN_TTL_S, DEFAULT_TOKEN_LIFETIME_S) == (1800.0, 36000.0)
    opts = ServeOptions(state_dir=Path("x"))
    assert (opts.token_ttl_s, opts.token_lifetime_s) == (1800.0, 36000.0)
    args = _parser().parse_args(["serve", "--state-dir", "x", "--token-ttl", "2.5"])
    assert (args.token_ttl, args.token_lifetime) == (2.5, None)
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--state-dir", "x", "--token-ttl", "0"])


def test_a_token_expires_after_the_idle_time_and_each_request_renews_it() -> None:
    clock = Clock()
    auth = _auth(clock)
    token = auth.new_token()
    for _ in range(5):  # used every 9 s: 45 s in all, longer than the ttl
        clock.now += 9.0
        assert auth.valid_token(token)
    clock.now += 10.0
    assert not auth.valid_token(token)
    clock.now -= 5.0  # forgotten: it does not come back
    assert not auth.valid_token(token)
    assert auth.stats() == {
        "issued": 1,
        "expired": 1,
        "live": 0,
        "token_ttl_s": 10.0,
        "token_lifetime_s": 100.0,
    }


def test_a_busy_token_expires_at_the_hard_limit() -> None:
    clock = Clock()
    auth = _auth(clock)
    token = auth.new_token()
    answers = []
    for step in range(1, 40):  # used every 3 s, never idle for long
        clock.now = 1000.0 + 3.0 * step
        answers.append(auth.valid_token(token))
    assert answers == [3.0 * step < 100.0 for step in range(1, 40)]
    fresh = auth.new_token()
    assert fresh != token and auth.valid_token(fresh)
    assert auth.stats()["expired"] == 1


def test_unknown_and_revoked_tokens_are_not_counted_as_expired() -> None:
    clock = Clock()
    auth = _auth(clock)
    token = auth.new_token()
    auth.revoke(token)
    assert not auth.valid_token(token) and not auth.valid_token("nonsense")
    assert auth.stats()["expired"] == 0


def test_positive_lifetimes_only() -> None:
    with pytest.raises(ValueError):
        _auth(Clock(), ttl=0)
    with pytest.raises(ValueError):
        _auth(Clock(), lifetime=-1)


def _app(auth: Auth, tmp_path: Path) -> App:
    router = Router()
    router.add("GET", "/", lambda req: Response(body=b"<api/>"))
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    return App(router=router, admin_router=Router(), auth=auth, faults=Faults(), ca_file=ca)


def _get(app: App, headers: dict[str, str]) -> Response:
    return app.handle(Request(method="GET", path=API_PREFIX, query={}, headers=headers, body=b""))


def test_an_expired_token_gets_the_engines_401(tmp_path: Path) -> None:
    clock = Clock()
    auth = _auth(clock)
    app = _app(auth, tmp_path)
    token = auth.new_token()
    ok = _get(app, {"authorization": f"Bearer {token}"})
    assert (ok.status, ok.body) == (200, b"<api/>")
    clock.now += 10.0
    refused = _get(app, {"authorization": f"Bearer {token}"})
    assert (refused.status, refused.body) == (401, b"")
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    # A JSESSIONID session (Basic + persistent-auth) is a token too: it expires alike.
    basic = base64.b64encode(b"admin@internal:pw").decode()
    opened = _get(app, {"authorization": f"Basic {basic}", "prefer": "persistent-auth"})
    session = opened.headers["Set-Cookie"].split(";")[0]
    assert _get(app, {"cookie": session}).status == 200
    clock.now += 10.0
    assert _get(app, {"cookie": session}).status == 401


def test_sso_answer_carries_the_hard_limit_as_exp(tmp_path: Path) -> None:
    clock = Clock()
    app = _app(_auth(clock, lifetime=3600.0), tmp_path)
    body = b"grant_type=password&scope=ovirt-app-api&username=admin%40internal&password=pw"
    before = time.time()
    resp = app.handle(
        Request(
            method="POST", path="/ovirt-engine/sso/oauth/token", query={}, headers={}, body=body
        )
    )
    doc = json.loads(resp.body)
    assert resp.status == 200 and doc["token_type"] == "bearer"
    exp_ms = int(doc["exp"])  # milliseconds since the epoch, truncated (1 ms of float slack)
    assert before * 1000 + 3_600_000 - 1 <= exp_ms <= time.time() * 1000 + 3_600_000 + 1


def test_children_run_with_a_private_umask(tmp_path: Path) -> None:
    _proc.run(["touch", str(tmp_path / "made-by-a-child")])
    proc = _proc.spawn(["touch", str(tmp_path / "spawned")])
    assert proc.wait(timeout=30) == 0
    d = _proc.private_dir(tmp_path / "a" / "b")
    fd = _proc.private_file(d / "log")
    os.close(fd)
    modes = {
        p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in tmp_path.rglob("*")
    }
    assert modes == {
        "made-by-a-child": 0o600,
        "spawned": 0o600,
        "a": 0o700,
        "a/b": 0o700,
        "a/b/log": 0o600,
    }


def test_an_older_state_dir_is_made_private(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "storage" / "sd").mkdir(parents=True, mode=0o755)
    volume = root / "storage" / "sd" / "vol"
    volume.write_bytes(b"x")
    volume.chmod(0o644)
    (root / "link").symlink_to("/etc/hostname")
    root.chmod(0o755)
    _make_private(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "storage").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "storage" / "sd").stat().st_mode) == 0o700
    assert stat.S_IMODE(volume.stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat("/etc/hostname").st_mode) != 0o600  # symlinks not followed
