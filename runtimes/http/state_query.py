"""State queries of stateful flows: one key with its version, or a page of keys.

* ``GET /state/<flow>/<key>``: the key's state, with an ``ETag`` naming its version (the
  input record that last changed it, :class:`flows.ports.StoredState`); a request whose
  ``If-None-Match`` names it gets ``304 Not Modified`` and no body.
* ``GET /state/<flow>?prefix=&limit=&after=&where=``: a page of states in key order, each
  with its ``version``; ``where`` (JSON) keeps the states whose value contains it, as
  PostgreSQL's ``jsonb @>`` says (``{"a": 1}`` matches ``{"a": 1, "b": 2}``, ``[1]``
  matches ``[1, 2]``), for flows whose state format is ``json`` and that do not encrypt.

States of flows with ``encrypt=True`` are decrypted here (:meth:`StatefulStep.decode_state`);
whether the caller may see them is decided before (``HttpApi._sealed``).

Windowed flows and flows with timers or a TTL have their own queries (``timed_state.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from flows.errors import TableMissingError
from flows.formats import JSON, Format, jsonb_problem
from flows.ports import StoredState
from flows.steps import StatefulStep
from runtimes.http.responses import Response, error_response, json_response

__all__ = [
    "PAGE_DEFAULT",
    "PAGE_MAX",
    "QueryStore",
    "cursor",
    "decoded",
    "from_cursor",
    "key_bytes",
    "one_state",
    "page_limit",
    "state_page",
]

PAGE_DEFAULT, PAGE_MAX = 100, 1000


@runtime_checkable
class QueryStore(Protocol):
    """What state queries need of a state store (both stores have it).

    A table that does not exist reads as empty, or raises :class:`TableMissingError`
    (PostgreSQL); either way the API answers as for a table without the key.
    """

    def state(self, table: str, key: bytes) -> StoredState | None:
        """One state and its version; None when there is none."""
        ...

    def states(
        self,
        table: str,
        prefix: bytes,
        after: bytes | None,
        limit: int,
        where: str | None = None,
    ) -> list[StoredState]:
        """Up to ``limit`` states whose key starts with ``prefix``, sorts after ``after``
        and, with ``where`` (JSON text), whose value contains it (``jsonb @>``), in key
        order; ``ValueError`` for a ``where`` on a table that does not keep JSON."""
        ...


def key_bytes(fmt: Format[Any], raw: bytes) -> bytes:
    """The encoded key named by the percent-decoded URL bytes ``raw`` (package docstring).

    Any format works, flows' own or a user's (any object with ``name``, ``encode`` and
    ``decode``): the format itself is asked. When it decodes ``raw``, the key is that value
    encoded again (bytes and str formats give ``raw`` back; JSON gives its own spelling, so
    ``[1, 2]`` names the key stored as ``[1,2]``). Otherwise ``raw`` is UTF-8 text given to
    ``encode`` (a JSON format writes it as a JSON string). Raises ``ValueError`` or
    ``TypeError`` when neither fits; the caller answers 400.
    """
    try:
        value: Any = fmt.decode(raw)
    except ValueError:  # the Format contract: malformed bytes raise ValueError
        value = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    return fmt.encode(value)


def cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")


def from_cursor(text: str) -> bytes:
    """The key in a :func:`cursor`; ``binascii.Error`` when ``text`` is not one."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def one_state(
    step: StatefulStep, store: QueryStore, raw: bytes, if_none_match: str | None
) -> Response:
    """The state of the key named by the URL bytes ``raw``, with its ``ETag``; 304 when
    ``if_none_match`` names its version; 404 when it has none."""
    key_format = step.sources[0].key_format
    try:
        key = key_bytes(key_format, raw)
    except (TypeError, ValueError) as error:
        return error_response(
            400,
            f"the key does not fit the key format {key_format.name} of flow {step.flow!r}: {error}",
        )
    try:
        found = store.state(step.table, key)
    except TableMissingError:  # no worker of the flow has created it yet
        found = None
    if found is None:
        return error_response(404, f"no state for this key in flow {step.flow!r}")
    tag = (("ETag", f'"{found.version}"'),)
    if if_none_match is not None and _matches(if_none_match, found.version):
        return Response(304, b"", headers=tag)
    answer = {
        "flow": step.flow,
        "key": decoded(key_format, key),
        "state": _state(step, key, found.value),
    }
    return json_response(200, answer, tag)


def page_limit(params: dict[str, str]) -> int | Response:
    """The ``limit`` of a paged answer (``PAGE_DEFAULT`` when absent, at most
    ``PAGE_MAX``), or the 400 saying what is wrong with it."""
    try:
        limit = int(params.get("limit", PAGE_DEFAULT))
    except ValueError:
        return error_response(400, f"limit must be an integer, not {params['limit']!r}")
    if limit < 1:
        return error_response(400, "limit must be at least 1")
    return min(limit, PAGE_MAX)


def state_page(step: StatefulStep, store: QueryStore, query: str) -> Response:
    """A page of states (``query`` is the raw query string), or the 400 saying what to fix."""
    # latin-1 turns the percent-decoded text back into the bytes the client sent
    params = dict(parse_qsl(query, keep_blank_values=True, encoding="latin-1"))
    prefix = params.get("prefix", "").encode("latin-1")
    limit = page_limit(params)
    if isinstance(limit, Response):
        return limit
    after = None
    if "after" in params:
        try:
            after = from_cursor(params["after"])
        except (binascii.Error, ValueError):
            return error_response(400, "after must be the 'next' of a previous page")
    where = None
    if "where" in params:
        checked = _where(step, params["where"].encode("latin-1"))
        if isinstance(checked, Response):
            return checked
        where = checked
    try:
        found = store.states(step.table, prefix, after, limit + 1, where)
    except TableMissingError:
        found = []
    except ValueError as error:  # the table does not keep JSON (see the worker's log)
        return error_response(400, str(error))
    key_format = step.sources[0].key_format
    items = [
        {
            "key": decoded(key_format, s.key),
            "state": _state(step, s.key, s.value),
            "version": s.version,
        }
        for s in found[:limit]
    ]
    more = len(found) > limit
    return json_response(
        200, {"items": items, "next": cursor(found[limit - 1].key) if more else None}
    )


def _where(step: StatefulStep, raw: bytes) -> str | Response:
    """The ``where`` filter of a page as the JSON text PostgreSQL parses, or the 400 that
    says what to fix."""
    if step.encrypt:
        return error_response(
            400,
            f"flow {step.flow!r} encrypts its state at rest, so the database holds only "
            "ciphertext and where= cannot search it; page through the states instead",
        )
    if step.columns.value != "json":
        return error_response(
            400,
            f"flow {step.flow!r} keeps its state as {step.state_format.name}, not JSON: "
            "where= filters the states of flows whose state format is json",
        )
    example = 'where={"total":3}, percent-encoded'
    try:
        encoded = JSON.encode(json.loads(raw.decode("utf-8"), parse_constant=_no_constant))
    except (ValueError, UnicodeError) as error:
        return error_response(400, f"where must be a JSON value such as {example}: {error}")
    problem = jsonb_problem(encoded)
    if problem is not None:
        return error_response(400, f"where cannot be searched for: {problem}")
    return encoded.decode("utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _matches(if_none_match: str, version: str) -> bool:
    """Whether an ``If-None-Match`` header names ``version`` (weak comparison, RFC 9110):
    ``*``, or a list of entity tags one of which is ``"version"``, ``W/`` or not."""
    wanted = f'"{version}"'
    for listed in if_none_match.split(","):
        tag = listed.strip()
        if tag == "*" or tag.removeprefix("W/") == wanted:
            return True
    return False


def decoded(fmt: Format[Any], data: bytes) -> Any:
    """``data`` decoded with ``fmt``, or the bytes themselves (shown as base64)."""
    try:
        return fmt.decode(data)
    except Exception:
        return data


def _state(step: StatefulStep, key: bytes, encoded: bytes) -> Any:
    """A stored state as the flow sees it: decrypted when it encrypts, decoded. One that
    does not is a :class:`~flows.errors.FlowsError` (a 500 whose details go to the log only)."""
    return step.decode_state(key, encoded)
