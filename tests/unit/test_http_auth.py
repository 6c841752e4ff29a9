"""Bearer JWTs on the HTTP server (runtimes/http/auth.py): HS256 with a secret, RS256 with
a JWKS file or URL, read access per flow by a claim, beside the static token."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from flows import STR, App, Ingest, Message, StatefulMap, Topic
from flows.errors import ConfigError
from flows.records import RawMessage
from flows.testing import TestDriver
from runtimes.config import Settings
from runtimes.http import HttpApi, HttpRuntime
from runtimes.http.auth import Guard, JwtVerifier
from runtimes.metrics import PrometheusMetrics
from tests.unit.test_http_server import _parse, _read_all

words = Topic("words", key_format=STR, value_format=STR)
counts = Topic("counts", key_format=STR, value_format=STR)
SECRET = "s" * 32


def _accept(record: Any) -> Message:
    return Message(record.value, key=record.value)


def _count(record: Any, state: Any) -> tuple[str, int]:
    return str((state or 0) + 1), (state or 0) + 1


APP = App(
    "auth",
    [
        Ingest(name="in", path="/words", sink=words, fn=_accept, body_format=STR),
        StatefulMap(name="count", source=words, sink=counts, fn=_count),
    ],
)


class Broker:
    def open(self, topics: Sequence[Topic]) -> None:
        pass

    def check(self) -> None:
        pass

    def send(self, messages: Sequence[RawMessage]) -> None:
        pass

    def close(self) -> None:
        pass


def _token(
    key: Any = SECRET, algorithm: str = "HS256", kid: str | None = None, **claims: Any
) -> str:
    payload = {"exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(token=None, **settings)``: a server whose ``count`` flow has a state for
    ``w``; ``call(method, path, token)`` is the status of one request."""
    started: list[HttpRuntime] = []

    def start(token: str | None = None, **settings: Any) -> Any:
        driver = TestDriver(APP)
        driver.pipe("words", "w", key="w")
        api = HttpApi(
            APP,
            APP.routes,
            metrics=PrometheusMetrics(),
            broker=Broker(),
            query_store=driver.store,
            token=token,
        )
        runtime = HttpRuntime(Settings(http_host="127.0.0.1", http_port=0, **settings), api)
        runtime.start()
        started.append(runtime)

        def call(method: str, path: str, bearer: str | None = None) -> int:
            auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
            body = "w" if method == "POST" else ""
            request = (
                f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            )
            with socket.create_connection(runtime.address, timeout=10) as sock:
                sock.sendall(request.encode())
                return _parse(_read_all(sock))[0]

        return call

    yield start
    for runtime in started:
        runtime.stop()


def test_hs256_tokens_open_the_flows_their_claim_names(serve: Any) -> None:
    call = serve(http_jwt_secret=SECRET)
    assert call("GET", "/healthz") == 200  # open
    assert call("GET", "/state/count/w") == 401
    assert call("GET", "/state/count/w", _token(flows=["count"])) == 200
    assert call("GET", "/state/count", _token(flows=["count"])) == 200
    assert call("GET", "/state/other/w", _token(flows=["count"])) == 403
    assert call("POST", "/words", _token(flows=["count"])) == 403
    assert call("POST", "/words", _token(flows=["in"])) == 202  # the Ingest's name
    assert call("POST", "/words", _token(flows="count in")) == 202
    assert call("GET", "/state/count/w", _token(flows=["*"])) == 200
    assert call("GET", "/state/count/w", _token()) == 403  # no claim: no flow
    assert call("GET", "/state/count/w", _token(flows=7)) == 401  # not a list of names


@pytest.mark.parametrize(
    "bad",
    [
        _token(key="x" * 32, flows=["count"]),  # another secret
        _token(flows=["count"], exp=int(time.time()) - 120),  # expired
        jwt.encode({"flows": ["count"]}, SECRET, algorithm="HS256"),  # no exp
        jwt.encode({"flows": ["count"], "exp": 2**40}, cast(Any, None), algorithm="none"),
        _token(flows=["count"], aud="someone-else"),  # no audience is configured
        "not.a.token",
    ],
)
def test_tokens_that_do_not_verify_get_401(serve: Any, bad: str) -> None:
    call = serve(http_jwt_secret=SECRET)
    assert call("GET", "/state/count/w", bad) == 401


def test_audience_and_issuer_are_checked_when_set(serve: Any) -> None:
    call = serve(http_jwt_secret=SECRET, http_jwt_audience="flows", http_jwt_issuer="idp")
    good: dict[str, Any] = {"flows": ["count"], "aud": "flows", "iss": "idp"}
    assert call("GET", "/state/count/w", _token(**good)) == 200
    assert call("GET", "/state/count/w", _token(**{**good, "aud": "other"})) == 401
    assert call("GET", "/state/count/w", _token(**{**good, "iss": "other"})) == 401
    assert call("GET", "/state/count/w", _token(flows=["count"])) == 401  # neither


def test_the_static_token_still_opens_everything(serve: Any) -> None:
    call = serve(token="t0ken", http_jwt_secret=SECRET)
    assert call("GET", "/state/count/w", "t0ken") == 200
    assert call("POST", "/words", "t0ken") == 202
    assert call("GET", "/state/count/w", _token(flows=["count"])) == 200
    assert call("GET", "/state/count/w", "wrong") == 401


def _rsa() -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    return private, {**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}


def test_rs256_tokens_verify_with_a_jwks_file(serve: Any, tmp_path: Path) -> None:
    private, jwk = _rsa()
    other, _ = _rsa()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    call = serve(http_jwt_jwks=str(jwks))
    assert call("GET", "/state/count/w", _token(private, "RS256", "k1", flows=["count"])) == 200
    assert call("GET", "/state/count/w", _token(private, "RS256", "k2", flows=["count"])) == 401
    assert call("GET", "/state/count/w", _token(other, "RS256", "k1", flows=["count"])) == 401
    assert call("GET", "/state/count/w", _token(flows=["count"])) == 401  # HS256: no secret
    assert call("GET", "/state/other/w", _token(private, "RS256", "k1", flows=["count"])) == 403


def test_rs256_tokens_verify_with_a_jwks_url(serve: Any) -> None:
    private, jwk = _rsa()
    body = json.dumps({"keys": [jwk]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    issuer = HTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=issuer.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{issuer.server_address[1]}/jwks.json"
        call = serve(http_jwt_jwks=url)
        assert call("GET", "/state/count/w", _token(private, "RS256", "k1", flows=["count"])) == 200
        assert call("GET", "/state/count/w", _token(private, "RS256", "k2", flows=["count"])) == 401
    finally:
        issuer.shutdown()
        issuer.server_close()


def test_a_jwks_url_that_does_not_answer_gets_503(serve: Any) -> None:
    private, _ = _rsa()
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    call = serve(http_jwt_jwks=f"http://127.0.0.1:{port}/jwks.json")
    assert call("GET", "/state/count/w", _token(private, "RS256", "k1", flows=["count"])) == 503


def test_jwt_settings_are_checked_and_the_secret_never_shown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        JwtVerifier(secret="short")
    with pytest.raises(ConfigError, match="cannot read"):
        JwtVerifier(jwks=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"keys": "no"}')
    with pytest.raises(ConfigError, match="not a JWKS"):
        JwtVerifier(jwks=str(tmp_path / "bad.json"))
    settings = Settings.from_sources(environ={"FLOWS_HTTP_JWT_SECRET": SECRET})
    assert JwtVerifier.from_settings(settings) is not None
    assert JwtVerifier.from_settings(Settings()) is None
    assert settings.masked()["http_jwt_secret"] == "***" and SECRET not in repr(settings)
    assert Guard(None, None).check(None, "count") is None  # nothing configured: open
