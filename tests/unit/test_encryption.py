"""The state cipher (``flows/encryption.py``): AES-256-GCM with key ids, bound to a context."""

from __future__ import annotations

import base64
import itertools

import pytest

from flows import ConfigError, StateKeys
from flows.encryption import (
    NONCE_SIZE,
    CipherError,
    StateCipher,
    StateKey,
    key_id_of,
    state_context,
    timer_context,
    window_context,
)

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))


def _keys(*pairs: tuple[str, bytes]) -> StateKeys:
    return StateKeys([StateKey(key_id, secret) for key_id, secret in pairs])


def test_a_value_round_trips_and_names_its_key() -> None:
    cipher = StateCipher(_keys(("k1", SECRET)))
    sealed = cipher.encrypt(b'{"card":"4111"}', state_context(b"ann"))
    assert b"4111" not in sealed
    assert sealed[0] == 1 and key_id_of(sealed) == "k1"
    assert len(sealed) == 2 + len("k1") + NONCE_SIZE + len(b'{"card":"4111"}') + 16
    assert cipher.decrypt(sealed, state_context(b"ann")) == b'{"card":"4111"}'
    assert cipher.decrypt(cipher.encrypt(b"", state_context(b"")), state_context(b"")) == b""


def test_nonces_are_fresh_so_equal_states_do_not_look_equal() -> None:
    cipher = StateCipher(_keys(("k1", SECRET)))
    first, second = (cipher.encrypt(b"3", state_context(b"the")) for _ in range(2))
    assert first != second


def test_an_unknown_key_id_names_the_id_and_the_keys_at_hand() -> None:
    sealed = StateCipher(_keys(("old", SECRET))).encrypt(b"1", state_context(b"k"))
    with pytest.raises(CipherError) as caught:
        StateCipher(_keys(("new", OTHER))).decrypt(sealed, state_context(b"k"))
    assert caught.value.key_id == "old"
    assert "this process has new" in caught.value.reason


def test_the_same_id_with_another_secret_does_not_authenticate() -> None:
    sealed = StateCipher(_keys(("k1", SECRET))).encrypt(b"1", state_context(b"k"))
    with pytest.raises(CipherError, match="does not authenticate") as caught:
        StateCipher(_keys(("k1", OTHER))).decrypt(sealed, state_context(b"k"))
    assert caught.value.key_id == "k1"


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_a_tampered_value_does_not_decrypt(where: str) -> None:
    cipher = StateCipher(_keys(("k1", SECRET)))
    sealed = bytearray(cipher.encrypt(b"balance=100", state_context(b"k")))
    index = {"nonce": 4, "ciphertext": 2 + 2 + NONCE_SIZE, "tag": len(sealed) - 1}[where]
    sealed[index] ^= 0x01
    with pytest.raises(CipherError, match="does not authenticate"):
        cipher.decrypt(bytes(sealed), state_context(b"k"))


def test_a_header_altered_to_name_another_key_does_not_decrypt() -> None:
    # both keys share the secret: only the header's binding into the tag refuses the swap
    cipher = StateCipher(_keys(("k1", SECRET), ("k2", SECRET)))
    sealed = cipher.encrypt(b"1", state_context(b"k"))
    swapped = sealed[:2] + b"k2" + sealed[4:]
    with pytest.raises(CipherError, match="does not authenticate") as caught:
        cipher.decrypt(swapped, state_context(b"k"))
    assert caught.value.key_id == "k2"


@pytest.mark.parametrize(
    ("written", "read"),
    [
        (state_context(b"ann"), state_context(b"bob")),  # copied to another key's row
        (state_context(b"ann"), timer_context(b"ann", 0)),  # to another kind of row
        (timer_context(b"ann", 7), timer_context(b"ann", 8)),  # to another timer
        (window_context(b"ann", 0), window_context(b"ann", 60_000)),  # to another window
    ],
)
def test_a_value_moved_to_another_context_does_not_decrypt(written: bytes, read: bytes) -> None:
    cipher = StateCipher(_keys(("k1", SECRET)))
    with pytest.raises(CipherError, match="does not authenticate"):
        cipher.decrypt(cipher.encrypt(b"1", written), read)


@pytest.mark.parametrize(
    "data", [b"", b"3", b'{"plain":"json"}', b"\x01\x00" + bytes(40), b"\x01\x05k1" + bytes(10)]
)
def test_bytes_without_a_header_are_not_encrypted_values(data: bytes) -> None:
    assert key_id_of(data) is None
    with pytest.raises(CipherError, match="encryption header") as caught:
        StateCipher(_keys(("k1", SECRET))).decrypt(data, state_context(b"k"))
    assert caught.value.key_id is None


def test_rotation_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old = StateCipher(_keys(("k1", SECRET)))
    stored = old.encrypt(b"7", state_context(b"the"))
    rotated = StateCipher(_keys(("k2", OTHER), ("k1", SECRET)))
    assert rotated.primary_id == "k2"
    assert rotated.decrypt(stored, state_context(b"the")) == b"7"
    rewritten = rotated.encrypt(b"8", state_context(b"the"))
    assert key_id_of(rewritten) == "k2"
    with pytest.raises(CipherError):  # the old keyring cannot read what the new key wrote
        old.decrypt(rewritten, state_context(b"the"))


def test_injected_nonces_are_used() -> None:
    counter = itertools.count()
    cipher = StateCipher(_keys(("k1", SECRET)), nonces=lambda n: next(counter).to_bytes(n, "big"))
    assert cipher.encrypt(b"x", b"")[4 : 4 + NONCE_SIZE] == bytes(NONCE_SIZE)
    assert cipher.encrypt(b"x", b"")[4 : 4 + NONCE_SIZE] == (1).to_bytes(NONCE_SIZE, "big")


# --- the keyring and FLOWS_STATE_KEYS ---------------------------------------------------


def _b64(secret: bytes, urlsafe: bool = False) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(secret).decode("ascii")


def test_keys_parse_from_the_setting_and_back() -> None:
    secret = b"\xfb\xff" * 16  # base64 with '+' and '/' (or '-' and '_')
    text = f" new:{_b64(secret, urlsafe=True).rstrip('=')} , old:{_b64(OTHER)}"
    keys = StateKeys.parse(text)
    assert keys.ids == ("new", "old") and keys.primary.secret == secret
    assert [k.secret for k in keys] == [secret, OTHER] and len(keys) == 2
    assert StateKeys.parse(keys.to_setting()).ids == keys.ids
    generated = StateKeys.generate("a", "b")
    assert generated.ids == ("a", "b") and generated[0].secret != generated[1].secret


def test_keys_never_show_their_secrets() -> None:
    keys = StateKeys.parse(f"k1:{_b64(SECRET)}")
    for shown in (repr(keys), str(keys), repr(keys.primary), repr(list(keys))):
        assert _b64(SECRET) not in shown and repr(SECRET) not in shown
    assert repr(keys) == "StateKeys(['k1'])"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        (" , ", "is empty"),
        ("k1", "entry 1 is not id:base64"),
        (f"k1:{_b64(SECRET)},:{_b64(SECRET)}", "entry 2 is not id:base64"),
        ("k1:not base64!", "secret of key 'k1' \\(entry 1\\) is not base64"),
        (f"k1:{_b64(SECRET[:16])}", "'k1' is 16 bytes; AES-256 needs 32"),
        (f"k 1:{_b64(SECRET)}", "key id 'k 1' must be"),
        (f"k1:{_b64(SECRET)},k1:{_b64(OTHER)}", "'k1' appears twice"),
    ],
)
def test_malformed_keys_are_config_errors_that_never_show_a_secret(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        StateKeys.parse(text)
    assert _b64(SECRET) not in str(caught.value) and _b64(OTHER) not in str(caught.value)


def test_what_it_encrypted_is_remembered_for_its_own_context_only() -> None:
    cipher = StateCipher(_keys(("k1", SECRET)), remember=2)
    sealed = [cipher.encrypt(str(n).encode(), state_context(b"k%d" % n)) for n in range(3)]
    assert len(cipher._recent) <= 2  # bounded: it starts over when full
    for n, value in enumerate(sealed):  # from memory or decrypted, the same answer
        assert cipher.decrypt(value, state_context(b"k%d" % n)) == str(n).encode()
    with pytest.raises(CipherError, match="does not authenticate"):
        cipher.decrypt(sealed[2], state_context(b"k0"))  # remembered, but not for this row
    fresh = StateCipher(_keys(("k1", SECRET)))
    assert fresh.decrypt(sealed[0], state_context(b"k0")) == b"0"  # another process
