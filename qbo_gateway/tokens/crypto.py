"""Encryption of stored tokens, bound to the realm they belong to.

Tokens at rest (SQLite file, Redis values) are Fernet ciphertexts, never plain text. Keys
come from `QBO_TOKEN_KEYS` (comma-separated; the first encrypts, all decrypt, so keys can be
rotated). Each ciphertext carries the realm id inside the authenticated payload and is
checked on decrypt: a record copied under another realm's key fails instead of handing one
company's tokens to another.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from qbo_gateway.logs import register_tokens
from qbo_gateway.tokens.records import TokenRecord

log = structlog.get_logger(__name__)

KEY_FILE_NAME = "token.key"


class InvalidKeys(ValueError):
    """QBO_TOKEN_KEYS (or the key file) holds no usable Fernet key."""


class TokenDecryptError(Exception):
    """A stored ciphertext cannot be read: wrong key, tampered, or another realm's record."""


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def parse_keys(keys: str | Sequence[str]) -> list[str]:
    items = keys.split(",") if isinstance(keys, str) else list(keys)
    out = [k.strip() for k in items if k.strip()]
    if not out:
        raise InvalidKeys("QBO_TOKEN_KEYS is empty: give at least one key (`qbo-gateway keygen`)")
    for index, key in enumerate(out):
        try:
            Fernet(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            # Never echo the key itself: say which position is wrong.
            raise InvalidKeys(
                f"QBO_TOKEN_KEYS key #{index + 1} is not a Fernet key (32 url-safe base64 bytes)"
            ) from exc
    return out


class TokenCipher:
    """MultiFernet over the configured keys, with the realm id bound into every payload."""

    def __init__(self, keys: str | Sequence[str]) -> None:
        self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in parse_keys(keys)])

    def encrypt(self, realm_id: str, payload: dict[str, Any]) -> bytes:
        document = json.dumps({"realm": realm_id, "data": payload}, separators=(",", ":"))
        return self._fernet.encrypt(document.encode("utf-8"))

    def decrypt(self, realm_id: str, ciphertext: bytes) -> dict[str, Any]:
        try:
            document = json.loads(self._fernet.decrypt(ciphertext))
        except (InvalidToken, ValueError, TypeError) as exc:
            raise TokenDecryptError(
                f"token record of realm {realm_id} cannot be decrypted with the configured keys"
            ) from exc
        if not isinstance(document, dict) or document.get("realm") != realm_id:
            raise TokenDecryptError(f"token record stored under realm {realm_id} belongs elsewhere")
        data = document.get("data")
        if not isinstance(data, dict):
            raise TokenDecryptError(f"token record of realm {realm_id} is malformed")
        return data


def load_or_create_key_file(state_dir: Path | str) -> str:
    """The embedded-mode key: read `<state_dir>/token.key`, or create it (0600) with a warning.

    Used only when QBO_TOKEN_KEYS is unset in embedded mode, so a first run works without
    setup while the operator is told that the key now lives next to the data it protects.
    """
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / KEY_FILE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("token_key_file_permissions", path=str(path), mode=oct(mode))
        text = path.read_text(encoding="ascii").strip()
        parse_keys(text)
        return text
    key = generate_key()
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    log.warning(
        "token_key_generated",
        path=str(path),
        note="QBO_TOKEN_KEYS is unset: generated a key file next to the token store; "
        "back it up or set QBO_TOKEN_KEYS (losing it loses every stored realm)",
    )
    return key


def seal_record(cipher: TokenCipher, record: TokenRecord) -> bytes:
    """The whole record as one realm-bound ciphertext (what both token stores keep)."""
    # Every token the process stores or loads passes here: the log scrubber learns it.
    register_tokens(record.access_token, record.refresh_token)
    return cipher.encrypt(record.realm_id, dataclasses.asdict(record))


def open_record(cipher: TokenCipher, realm_id: str, ciphertext: bytes) -> TokenRecord:
    data = cipher.decrypt(realm_id, ciphertext)
    register_tokens(str(data.get("access_token", "")), str(data.get("refresh_token", "")))
    try:
        return TokenRecord(**{name: data[name] for name in _RECORD_FIELDS if name in data})
    except TypeError as exc:
        raise TokenDecryptError(f"token record of realm {realm_id} is malformed") from exc


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(TokenRecord))
