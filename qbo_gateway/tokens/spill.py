"""The spill file: refreshed pairs the token store has not acknowledged, on local disk.

Under strict rotation a refreshed pair is the only live copy of the realm's refresh token
from the moment Intuit answers. The store may be down, partitioned or failing over right
then, and the process may be killed before it comes back, so every refreshed pair is
written here first (before anything uses it) and removed only once the store holds it.
The next start, or the store's recovery, reconciles what is left (`token_reconcile`).

It also keeps refresh intents: a note, written before each token call and cleared once its
outcome is known, that a refresh of a realm was in flight. A crash in between leaves the
note, and the next start knows the realm's refresh outcome is unknown.

One small file in QBO_STATE_DIR, replaced atomically (write a temporary file, fsync it,
rename it over, fsync the directory) so a crash leaves the old or the new file, never half
of one. Pairs are realm-bound Fernet ciphertexts like the store's; the file is 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from qbo_gateway.logs import failure
from qbo_gateway.tokens.crypto import TokenCipher, TokenDecryptError, open_record, seal_record
from qbo_gateway.tokens.records import TokenRecord

log = structlog.get_logger(__name__)

SPILL_FILE_NAME = "token-spill.json"
FORMAT = 1


@dataclass(frozen=True)
class Intent:
    """A token call was about to be made for the realm, from the record at `version`."""

    realm_id: str
    version: int
    started_at: float


class SpillFile:
    """Pairs not yet in the store and refresh intents; durable when `path` is set."""

    def __init__(self, path: Path | None = None, cipher: TokenCipher | None = None) -> None:
        self.path = path
        self._cipher = cipher
        self._pairs: dict[str, TokenRecord] = {}
        self._unreadable: dict[str, str] = {}  # kept as found: a key may come back
        self._intents: dict[str, Intent] = {}
        self._write_lock = asyncio.Lock()
        self._file_lock = threading.Lock()
        if path is not None:
            self._load()

    @classmethod
    def in_dir(cls, state_dir: Path | str, cipher: TokenCipher) -> SpillFile:
        return cls(Path(state_dir) / SPILL_FILE_NAME, cipher)

    # --- reading ----------------------------------------------------------------------

    def get(self, realm_id: str) -> TokenRecord | None:
        return self._pairs.get(realm_id)

    def realms(self) -> list[str]:
        return sorted(self._pairs)

    def intents(self) -> list[Intent]:
        return sorted(self._intents.values(), key=lambda i: i.realm_id)

    def intent(self, realm_id: str) -> Intent | None:
        return self._intents.get(realm_id)

    # --- changing (each change is on disk before it returns) ---------------------------

    async def keep(self, record: TokenRecord) -> None:
        """Hold `record` until the store has it (replaces an older pair of the realm)."""
        self._pairs[record.realm_id] = record
        await self._persist()

    async def release(self, realm_id: str, version: int | None = None) -> None:
        """The store has the realm's pair at `version` (or newer): forget ours if not newer.

        `version=None` forgets it whatever it is (an operator imported new tokens)."""
        held = self._pairs.get(realm_id)
        if held is None or (version is not None and held.version > version):
            return
        del self._pairs[realm_id]
        await self._persist()

    async def begin(self, intent: Intent) -> None:
        self._intents[intent.realm_id] = intent
        await self._persist()

    async def resolve(self, realm_id: str) -> None:
        if self._intents.pop(realm_id, None) is not None:
            await self._persist()

    # --- the file ---------------------------------------------------------------------

    async def _persist(self) -> None:
        if self.path is None:
            return
        async with self._write_lock:
            document = self._document()
            # Shielded: a caller that leaves must not leave the file unwritten.
            await asyncio.shield(asyncio.to_thread(self._write, document))

    def _document(self) -> dict[str, Any]:
        assert self._cipher is not None
        pairs = dict(self._unreadable)
        for realm_id, record in self._pairs.items():
            pairs[realm_id] = seal_record(self._cipher, record).decode("ascii")
        intents = {
            i.realm_id: {"version": i.version, "started_at": i.started_at}
            for i in self._intents.values()
        }
        return {"format": FORMAT, "pairs": pairs, "intents": intents}

    def _write(self, document: dict[str, Any]) -> None:
        assert self.path is not None
        directory = self.path.parent
        with self._file_lock:
            if not document["pairs"] and not document["intents"]:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                    _fsync_dir(directory)
                return
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, separators=(",", ":"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(directory)

    def _load(self) -> None:
        assert self.path is not None and self._cipher is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            document = json.loads(raw)
            pairs = dict(document.get("pairs", {}))
            intents = dict(document.get("intents", {}))
        except (ValueError, AttributeError, TypeError):
            # Never delete what may be the only copy of a refresh token: set it aside.
            aside = self.path.with_name(self.path.name + ".unreadable")
            os.replace(self.path, aside)
            log.critical("token_spill_unreadable", path=str(aside))
            return
        for realm_id, blob in pairs.items():
            try:
                self._pairs[realm_id] = open_record(self._cipher, realm_id, str(blob).encode())
            except TokenDecryptError as exc:
                self._unreadable[realm_id] = str(blob)
                log.critical("token_spill_record_unreadable", realm_id=realm_id, **failure(exc))
        for realm_id, item in intents.items():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self._intents[realm_id] = Intent(
                    realm_id, int(item["version"]), float(item["started_at"])
                )
        if self._pairs or self._intents:
            log.warning(
                "token_spill_loaded",
                realms=sorted(self._pairs),
                unresolved_refreshes=sorted(self._intents),
            )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
