"""Where steps that keep state encrypt it: one mechanism for states, timers and windows.

A step with ``encrypt`` passes every value it stores through :meth:`Sealing.seal` and every
value it loads through :meth:`Sealing.unseal`, each with the value's context (what it is
of: :func:`~flows.encryption.state_context` and its kin), using the ``cipher`` that the
app's state keys made (:meth:`flows.App.bind`). Without ``encrypt`` both give the bytes
back as they are.
"""

from __future__ import annotations

from flows.encryption import CipherError, StateCipher, key_id_of
from flows.errors import ConfigError, StateDecryptionError

__all__ = ["Sealing"]


class Sealing:
    """Methods over the fields ``flow``, ``table``, ``encrypt`` and ``cipher`` of the step
    dataclasses that mix it in (:class:`~flows.steps.StatefulStep`,
    :class:`~flows.steps.window.WindowStep`)."""

    flow: str
    table: str
    encrypt: bool
    cipher: StateCipher | None

    def require_keys(self) -> StateCipher | None:
        """The cipher of an encrypted flow (None for a flow that does not encrypt);
        :class:`ConfigError` when the flow encrypts and no state keys were given."""
        if self.encrypt and self.cipher is None:
            raise ConfigError(
                f"flow {self.flow!r} encrypts its state (encrypt=True), but no state keys "
                "were given: set FLOWS_STATE_KEYS to id:base64-of-32-bytes entries (generate "
                "a key with: openssl rand -base64 32), or pass TestDriver(app, state_keys=...)"
            )
        return self.cipher

    def seal(self, data: bytes, context: bytes) -> bytes:
        """``data`` as stored: encrypted for ``context`` when the flow encrypts."""
        cipher = self.cipher or self.require_keys()
        return data if cipher is None else cipher.encrypt(data, context)

    def unseal(self, key: bytes, data: bytes, context: bytes) -> bytes:
        """Stored bytes of ``key`` back to what the flow wrote (decrypted for ``context``
        when it encrypts); :class:`StateDecryptionError` when they do not decrypt."""
        cipher = self.cipher or self.require_keys()
        if cipher is None:
            return data
        try:
            return cipher.decrypt(data, context)
        except CipherError as error:
            raise StateDecryptionError(
                self.flow, self.table, key, error.key_id, error.reason
            ) from None

    def value_context(self, key: bytes, start: int) -> bytes:
        """The context of the value stored at ``(key, start)`` of this step's table
        (``start`` is 0 for a state table, which has none)."""
        raise NotImplementedError

    def reseal(self, key: bytes, start: int, data: bytes, plaintext: bool = False) -> bytes | None:
        """The stored value ``data`` at ``(key, start)`` encrypted with the first state key;
        None when it already is (``flows state rotate``). With ``plaintext``, a value
        without an encryption header is taken as one stored before the flow encrypted,
        and encrypted as it is; without, it is a :class:`StateDecryptionError`."""
        cipher = self.require_keys()
        if cipher is None:
            raise ConfigError(f"flow {self.flow!r} does not encrypt its state (encrypt=True)")
        context = self.value_context(key, start)
        found = key_id_of(data)
        if found == cipher.primary_id:
            return None
        if found is None and plaintext:
            return cipher.encrypt(data, context)
        return cipher.encrypt(self.unseal(key, data, context), context)
