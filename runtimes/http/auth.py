"""Who may call the guarded endpoints (``/state/*`` and the ingest routes).

Two kinds of bearer credential, either or both configured; with neither, the endpoints are
open:

* the static token ``FLOWS_HTTP_TOKEN`` (compared in constant time by
  :meth:`HttpApi.authorised <runtimes.http.api.HttpApi.authorised>`) opens every guarded
  endpoint;
* JSON Web Tokens, verified with PyJWT: HS256 signed with ``FLOWS_HTTP_JWT_SECRET`` (at
  least 32 bytes), RS256 signed by a key of the JWKS at ``FLOWS_HTTP_JWT_JWKS`` (a file
  read at start, or an ``http(s)://`` URL fetched and cached by PyJWT's ``PyJWKClient``;
  the token's ``kid`` picks the key). A token must carry ``exp``; ``aud`` and ``iss`` are
  checked against ``FLOWS_HTTP_JWT_AUDIENCE`` / ``FLOWS_HTTP_JWT_ISSUER`` when they are
  set (a token with an ``aud`` is refused when no audience is set). The algorithm comes
  from the configuration, never from the token alone: an HS256 token is verified only with
  the secret, an RS256 one only with the JWKS.

A JWT opens the flows its claim ``FLOWS_HTTP_JWT_CLAIM`` (default ``flows``) names: a list
of flow names or one string of names separated by spaces or commas, ``*`` for every flow.
``/state/<flow>...`` needs ``<flow>``; an ingest route needs the name of its ``Ingest``.
Answers: 401 with ``WWW-Authenticate`` for a missing, malformed, expired or badly signed
credential; 403 for a valid JWT that does not name the flow; 503 when the JWKS URL does
not answer. The reason is logged (one line per refusal), never the token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jwt

from flows.errors import ConfigError
from runtimes.config import Settings
from runtimes.http.responses import Response, error_response

__all__ = ["Guard", "JwtVerifier"]

#: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``
LEEWAY = 30


class JwtVerifier:
    """Verifies bearer JWTs and says which flows they open (see the module docstring)."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        jwks: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        claim: str = "flows",
    ) -> None:
        if secret is None and jwks is None:
            raise ConfigError("a JWT verifier needs http_jwt_secret, http_jwt_jwks or both")
        if secret is not None and len(secret.encode()) < 32:
            raise ConfigError(
                "http_jwt_secret must be at least 32 bytes (RFC 7518 section 3.2: an HS256 "
                "key as long as the hash)"
            )
        self.secret = secret
        self.audience = audience
        self.issuer = issuer
        self.claim = claim
        self._keys: jwt.PyJWKSet | None = None
        self._client: jwt.PyJWKClient | None = None
        if jwks is not None and re.match(r"https?://", jwks):
            self._client = jwt.PyJWKClient(jwks, cache_keys=True, lifespan=300, timeout=5)
        elif jwks is not None:
            self._keys = _read_jwks(jwks)

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier | None:
        """The verifier the settings configure; ``None`` when they configure no JWT."""
        if settings.http_jwt_secret is None and settings.http_jwt_jwks is None:
            return None
        return cls(
            secret=settings.http_jwt_secret,
            jwks=settings.http_jwt_jwks,
            audience=settings.http_jwt_audience,
            issuer=settings.http_jwt_issuer,
            claim=settings.http_jwt_claim,
        )

    def flows(self, token: str) -> frozenset[str]:
        """The flows ``token`` opens (``*``: all). Raises ``jwt.PyJWTError`` when it does
        not verify (``jwt.PyJWKClientConnectionError`` when the JWKS URL does not answer)."""
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        key: Any
        if algorithm == "HS256" and self.secret is not None:
            key = self.secret
        elif algorithm == "RS256" and (self._keys is not None or self._client is not None):
            key = self._rsa_key(token, header.get("kid"))
        else:
            raise jwt.InvalidAlgorithmError(f"tokens signed with {algorithm!r} are not accepted")
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=self.audience,
            issuer=self.issuer,
            leeway=LEEWAY,
            options={"require": ["exp"]},
        )
        granted = claims.get(self.claim, ())
        if isinstance(granted, str):
            granted = re.split(r"[\s,]+", granted.strip())
        if not isinstance(granted, list | tuple) or not all(isinstance(f, str) for f in granted):
            raise jwt.InvalidTokenError(f"the claim {self.claim!r} must list flow names")
        return frozenset(f for f in granted if f)

    def _rsa_key(self, token: str, kid: Any) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._keys is not None
        for found in self._keys.keys:
            if found.key_id == kid and found.algorithm_name in ("RS256", None):
                return found.key
        raise jwt.InvalidKeyError(f"no key with kid {kid!r} in the JWKS")


def _read_jwks(path: str) -> jwt.PyJWKSet:
    try:
        with open(path, encoding="utf-8") as handle:
            return jwt.PyJWKSet.from_json(handle.read())
    except OSError as error:
        raise ConfigError(f"http_jwt_jwks: cannot read {path}: {error}") from error
    except jwt.PyJWTError as error:
        raise ConfigError(f"http_jwt_jwks: {path} is not a JWKS: {error}") from error


class Guard:
    """Checks the ``Authorization`` header of a guarded request against the static token
    (``static``: ``None`` when there is none) and the JWT verifier (``None``: no JWT)."""

    def __init__(
        self, static: Callable[[str | None], bool] | None, verifier: JwtVerifier | None
    ) -> None:
        self.static = static
        self.verifier = verifier

    def check(self, header: str | None, flow: str) -> Response | None:
        """``None`` when the request may go on to ``flow``; else the answer (401, 403, 503)."""
        if self.static is None and self.verifier is None:
            return None
        if self.static is not None and self.static(header):
            return None
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if self.verifier is None or scheme.lower() != "bearer" or not token:
            return _unauthorised("a valid bearer token is required")
        try:
            granted = self.verifier.flows(token)
        except jwt.PyJWKClientConnectionError as error:
            return error_response(503, f"the JWKS to verify tokens with is unavailable: {error}")
        except jwt.PyJWTError as error:
            return _unauthorised(f"the bearer token is not valid: {error}")
        if "*" in granted or flow in granted:
            return None
        return error_response(403, f"the token does not open flow {flow!r}")


def _unauthorised(reason: str) -> Response:
    return error_response(401, reason, (("WWW-Authenticate", 'Bearer realm="flows"'),))
