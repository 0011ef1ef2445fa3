"""Token encryption: MultiFernet key handling, realm binding, the embedded key file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from qbo_gateway.tokens.crypto import (
    InvalidKeys,
    TokenCipher,
    TokenDecryptError,
    generate_key,
    load_or_create_key_file,
    open_record,
    parse_keys,
    seal_record,
)
from qbo_gateway.tokens.records import TokenRecord


def test_round_trip_and_realm_binding() -> None:
    cipher = TokenCipher(generate_key())
    blob = cipher.encrypt("1001", {"a": "SECRET-VALUE"})
    assert b"SECRET-VALUE" not in blob
    assert cipher.decrypt("1001", blob) == {"a": "SECRET-VALUE"}
    with pytest.raises(TokenDecryptError):
        cipher.decrypt("2002", blob)


def test_key_rotation_first_encrypts_all_decrypt() -> None:
    old, new = generate_key(), generate_key()
    blob = TokenCipher(old).encrypt("1", {"x": 1})
    rotated = TokenCipher(f"{new}, {old}")
    assert rotated.decrypt("1", blob) == {"x": 1}
    fresh = rotated.encrypt("1", {"x": 2})
    assert TokenCipher(new).decrypt("1", fresh) == {"x": 2}
    with pytest.raises(TokenDecryptError):
        TokenCipher(old).decrypt("1", fresh)


def test_tampered_ciphertext_fails() -> None:
    cipher = TokenCipher(generate_key())
    blob = bytearray(cipher.encrypt("1", {"x": 1}))
    blob[40] = ord("A") if blob[40] != ord("A") else ord("B")
    with pytest.raises(TokenDecryptError):
        cipher.decrypt("1", bytes(blob))


def test_bad_keys_are_refused_without_echoing_them() -> None:
    with pytest.raises(InvalidKeys, match="empty"):
        parse_keys(" , ")
    with pytest.raises(InvalidKeys, match="#2") as info:
        parse_keys(f"{generate_key()},not-a-key-SECRETISH")
    assert "SECRETISH" not in str(info.value)


def test_record_seal_keeps_every_field() -> None:
    cipher = TokenCipher(generate_key())
    record = TokenRecord("42", "AT", "RT", 10.0, 20.0, 30.0, version=3, needs_reconnect=True)
    assert open_record(cipher, "42", seal_record(cipher, record)) == record
    assert "AT" not in repr(record) and "RT" not in repr(record)


def test_key_file_created_0600_with_warning_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with capture_logs() as logs:
        key = load_or_create_key_file(state)
    path = state / "token.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [e["event"] for e in logs] == ["token_key_generated"]
    assert key not in repr(logs)
    parse_keys(key)
    with capture_logs() as logs:
        assert load_or_create_key_file(state) == key
    assert logs == []


def test_key_file_with_loose_permissions_warns(tmp_path: Path) -> None:
    key = load_or_create_key_file(tmp_path)
    os.chmod(tmp_path / "token.key", 0o644)
    with capture_logs() as logs:
        assert load_or_create_key_file(tmp_path) == key
    assert [e["event"] for e in logs] == ["token_key_file_permissions"]
