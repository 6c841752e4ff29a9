"""Encryption at rest of state values: AES-256-GCM over the bytes a state format wrote.

A flow with ``encrypt=True`` passes each state through :class:`StateCipher` between its
state format and the store (:meth:`flows.steps.StatefulStep.encode_state` and
``decode_state``), so whatever stores those bytes (the state table, its history) holds
ciphertext only. Keys stay in the clear: they are how rows are found.

The cipher is here, in the pure core, and not in the PostgreSQL adapter: it is computation
on bytes (AES-GCM from ``cryptography``, a nonce from the kernel's random generator), with
the keys injected (:class:`StateKeys`, parsed from ``FLOWS_STATE_KEYS`` by the runtime's
settings, or given to :class:`~flows.testing.TestDriver`). So the test driver, the worker
and the HTTP server run the one mechanism, and every store, in memory or PostgreSQL,
stores ciphertext without knowing it. ``cryptography`` is imported when a cipher is built:
apps that encrypt nothing never load it.

An encrypted value (layout version 1)::

    0x01 | n | key id (n bytes, ASCII) | nonce (12 bytes) | ciphertext | tag (16 bytes)

The associated data is that header followed by the value's *context*: what the value is
of (:func:`state_context`: ``s`` and the row key; a timer's: ``t``, its slot and the key; a
window's: ``w``, its start and the key). So a value copied to another key's row, or to
another kind of row, does not authenticate, and neither does a header altered to name
another key. The context does not name the table: keys are app-wide, so a value copied to
the same key of another encrypted flow would decrypt (and then meet that flow's state
format); give apps that must not share values keys of their own.

Rotation: the first key encrypts, every key decrypts, and each value names its key. Put a
new key first and keep the old one after it; values the old key wrote are read, and
written with the new key when they next change (``flows state rotate`` rewrites them all
at once). Nonces are random (96 bits): rotate a key well before it has encrypted 2^32
values (NIST SP 800-38D's bound for random nonces).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flows.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CipherError",
    "StateCipher",
    "StateKey",
    "StateKeys",
    "key_id_of",
    "state_context",
    "timer_context",
    "window_context",
]

#: the first byte of every encrypted value: the layout above
VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class StateKey:
    """One AES-256 key and the id that encrypted values carry to name it."""

    id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KEY_ID.fullmatch(self.id):
            raise ConfigError(
                f"state key id {self.id!r} must be 1 to 64 letters, digits, '.', '_' or '-'"
            )
        if len(self.secret) != KEY_SIZE:
            raise ConfigError(
                f"state key {self.id!r} is {len(self.secret)} bytes; AES-256 needs {KEY_SIZE} "
                f"(generate one with: openssl rand -base64 32)"
            )


class StateKeys(Sequence[StateKey]):
    """The keyring of encrypted flows: the first key encrypts, all decrypt.

    Never shows a secret (``repr`` lists the ids); :meth:`to_setting` is the one way to
    get them back as text."""

    def __init__(self, keys: Sequence[StateKey]) -> None:
        if not keys:
            raise ConfigError("state keys: at least one key is needed")
        ids = [key.id for key in keys]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ConfigError(f"state keys: key id {twice[0]!r} appears twice; ids must differ")
        self._keys = tuple(keys)

    @classmethod
    def parse(cls, text: str, where: str = "FLOWS_STATE_KEYS") -> StateKeys:
        """Keys from ``id:base64-of-32-bytes`` entries separated by commas (the format of
        ``FLOWS_STATE_KEYS``); base64 in the standard or URL-safe alphabet. A malformed
        entry is a :class:`ConfigError` naming its position and id, never its secret."""
        entries = [entry.strip() for entry in text.split(",")]
        if not any(entries):
            raise ConfigError(f"{where} is empty: give id:base64-of-32-bytes entries")
        keys = []
        for number, entry in enumerate(entries, 1):
            key_id, colon, encoded = entry.partition(":")
            key_id, encoded = key_id.strip(), encoded.strip()
            if not colon or not key_id or not encoded:
                raise ConfigError(
                    f"{where}: entry {number} is not id:base64-of-32-bytes (entries are "
                    "separated by commas)"
                )
            try:
                secret = base64.b64decode(
                    encoded.replace("-", "+").replace("_", "/") + "=" * (-len(encoded) % 4),
                    validate=True,
                )
            except (binascii.Error, ValueError):
                raise ConfigError(
                    f"{where}: the secret of key {key_id!r} (entry {number}) is not base64"
                ) from None
            keys.append(StateKey(key_id, secret))
        return cls(keys)

    @classmethod
    def generate(cls, *ids: str) -> StateKeys:
        """Fresh random keys with these ids (the first encrypts): for tests and demos."""
        return cls([StateKey(key_id, os.urandom(KEY_SIZE)) for key_id in ids])

    def to_setting(self) -> str:
        """The keys as ``FLOWS_STATE_KEYS`` takes them, secrets in the clear."""
        return ",".join(f"{k.id}:{base64.b64encode(k.secret).decode('ascii')}" for k in self)

    @property
    def primary(self) -> StateKey:
        """The key that encrypts."""
        return self._keys[0]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(key.id for key in self._keys)

    def __getitem__(self, index: int) -> StateKey:  # type: ignore[override]
        return self._keys[index]

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[StateKey]:
        return iter(self._keys)

    def __repr__(self) -> str:
        return f"StateKeys({list(self.ids)!r})"


class CipherError(ValueError):
    """A value that does not decrypt; ``key_id`` is the id its header names (None: no
    header). The step that meets it raises :class:`~flows.errors.StateDecryptionError`."""

    def __init__(self, key_id: str | None, reason: str) -> None:
        self.key_id = key_id
        self.reason = reason
        super().__init__(reason)


def state_context(key: bytes) -> bytes:
    """The context of a key's state: ``s`` and the row key."""
    return b"s" + key


def timer_context(key: bytes, slot: int) -> bytes:
    """The context of one timer of a key: ``t``, the timer's slot and the row key."""
    return b"t" + slot.to_bytes(8, "big", signed=True) + key


def window_context(key: bytes, start: int) -> bytes:
    """The context of one window of a key: ``w``, the window's start and the row key."""
    return b"w" + start.to_bytes(8, "big", signed=True) + key


def key_id_of(data: bytes) -> str | None:
    """The key id an encrypted value names; None when ``data`` has no valid header."""
    try:
        return _header(data)[0]
    except CipherError:
        return None


def _header(data: bytes) -> tuple[str, int]:
    """The key id of ``data`` and the length of its header (nonce included)."""
    if len(data) < 2 or data[0] != VERSION:
        raise CipherError(None, _NOT_ENCRYPTED)
    end = 2 + data[1] + NONCE_SIZE
    if data[1] == 0 or len(data) < end + TAG_SIZE:
        raise CipherError(None, _NOT_ENCRYPTED)
    try:
        key_id = data[2 : 2 + data[1]].decode("ascii")
    except UnicodeDecodeError:
        raise CipherError(None, _NOT_ENCRYPTED) from None
    return key_id, end


_NOT_ENCRYPTED = (
    f"it does not start with flows' encryption header (version {VERSION}): a state stored "
    "before encrypt=True was set? `flows state rotate <app> <flow> --plaintext` encrypts "
    "such states"
)


class StateCipher:
    """AES-256-GCM with the injected :class:`StateKeys` (see the module docstring).

    ``nonces(n)`` gives ``n`` random bytes (default ``os.urandom``); a test may inject a
    generator of its own, never a constant one in production.

    It remembers the plaintext of the last values it encrypted (up to ``remember``, then it
    starts over), each with its context: a worker's cache of its partitions' states holds
    the bytes it stored, so reading back what this process wrote costs no decryption. A
    value is taken from memory only for the context it was encrypted for, so a remembered
    value copied to another row still fails as it would from the table. Thread-safe:
    ``AESGCM`` objects keep no state between calls, and the memory is one ``dict``.
    """

    def __init__(
        self,
        keys: StateKeys,
        nonces: Callable[[int], bytes] = os.urandom,
        remember: int = 10_000,
    ) -> None:
        # imported here: only apps that encrypt pay for loading cryptography (~40 ms)
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._invalid_tag = InvalidTag
        self.keys = keys
        #: by the key id as a header spells it (ASCII bytes)
        self._aead: dict[bytes, AESGCM] = {
            key.id.encode("ascii"): AESGCM(key.secret) for key in keys
        }
        primary = keys.primary.id.encode("ascii")
        self._prefix = bytes([VERSION, len(primary)]) + primary
        self._sealer = self._aead[primary]
        self._nonces = nonces
        self._remember = remember
        self._recent: dict[bytes, tuple[bytes, bytes]] = {}

    @property
    def primary_id(self) -> str:
        """The id of the key that encrypts."""
        return self.keys.primary.id

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        """``plaintext`` encrypted with the first key, bound to ``context``."""
        nonce = self._nonces(NONCE_SIZE)
        header = self._prefix + nonce
        sealed = header + self._sealer.encrypt(nonce, plaintext, header + context)
        recent = self._recent
        if len(recent) >= self._remember:
            recent.clear()
        recent[sealed] = (context, plaintext)
        return sealed

    def decrypt(self, data: bytes, context: bytes) -> bytes:
        """The plaintext of ``data``, which must have been encrypted for ``context``;
        :class:`CipherError` when it was not, or names a key this keyring lacks."""
        known = self._recent.get(data)
        if known is not None and known[0] == context:
            return known[1]
        end = 2 + (data[1] if len(data) > 1 else 0) + NONCE_SIZE
        aead = self._aead.get(data[2 : end - NONCE_SIZE]) if data[:1] == b"\x01" else None
        if aead is None or len(data) < end + TAG_SIZE:
            key_id, end = _header(data)  # CipherError when there is no header
            raise CipherError(
                key_id,
                f"no key of that id is among the state keys (this process has "
                f"{', '.join(self.keys.ids)}): add it to FLOWS_STATE_KEYS, after the key "
                "that encrypts",
            )
        header = data[:end]
        try:
            return aead.decrypt(header[-NONCE_SIZE:], data[end:], header + context)
        except self._invalid_tag:
            raise CipherError(
                _header(data)[0],
                "it does not authenticate under that key: the value was changed or copied "
                "from another key's row, or the key's secret is not the one that encrypted it",
            ) from None
