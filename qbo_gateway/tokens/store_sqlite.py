"""The embedded-mode token store: one SQLite file in QBO_STATE_DIR.

A rotated refresh token that is lost severs the realm for good, so every write is durable
before it returns (WAL with synchronous=FULL) and versioned (compare-and-set inside one
IMMEDIATE transaction). Records are Fernet ciphertexts bound to their realm; only the realm
id and version are stored in the clear. SQLite calls block, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.tokens.crypto import TokenCipher, TokenDecryptError, open_record, seal_record
from qbo_gateway.tokens.records import TokenRecord, is_newer

DB_FILE_NAME = "tokens.sqlite3"
_PAGE = 500  # records read at once by a listing

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    realm_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    record BLOB NOT NULL
)
"""


class SqliteTokenStore:
    def __init__(self, path: Path | str, cipher: TokenCipher) -> None:
        self.path = Path(path)
        self._cipher = cipher
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            # Create it private before SQLite opens it: the file holds (encrypted) tokens.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=10
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    @classmethod
    def in_dir(cls, state_dir: Path | str, cipher: TokenCipher) -> SqliteTokenStore:
        return cls(Path(state_dir) / DB_FILE_NAME, cipher)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StateUnavailable("token store is closed")
        return self._db

    async def get(self, realm_id: str) -> TokenRecord | None:
        row = await asyncio.to_thread(self._select, realm_id)
        return None if row is None else self._open(realm_id, row)

    def _select(self, realm_id: str) -> tuple[int, bytes] | None:
        with self._lock:
            row = (
                self._conn()
                .execute("SELECT version, record FROM tokens WHERE realm_id = ?", (realm_id,))
                .fetchone()
            )
        return None if row is None else (int(row[0]), bytes(row[1]))

    def _open(self, realm_id: str, row: tuple[int, bytes]) -> TokenRecord:
        record = open_record(self._cipher, realm_id, row[1])
        if record.version != row[0]:
            raise TokenDecryptError(f"token record of realm {realm_id} has a mismatched version")
        return record

    async def put(
        self, record: TokenRecord, *, expected_version: int | None, force: bool = False
    ) -> TokenRecord | None:
        return await asyncio.to_thread(self._put, record, expected_version, force)

    async def restore(self, record: TokenRecord) -> TokenRecord:
        return await asyncio.to_thread(self._restore, record)

    def _restore(self, record: TokenRecord) -> TokenRecord:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT version, record FROM tokens WHERE realm_id = ?", (record.realm_id,)
                ).fetchone()
                if row is not None:
                    current = self._open(record.realm_id, (int(row[0]), bytes(row[1])))
                    if not is_newer(record, current):
                        db.execute("ROLLBACK")
                        return current
                self._upsert(db, record)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return record

    def _upsert(self, db: sqlite3.Connection, stored: TokenRecord) -> None:
        db.execute(
            "INSERT INTO tokens (realm_id, version, record) VALUES (?, ?, ?) "
            "ON CONFLICT(realm_id) DO UPDATE SET version = excluded.version, "
            "record = excluded.record",
            (stored.realm_id, stored.version, seal_record(self._cipher, stored)),
        )

    def _put(
        self, record: TokenRecord, expected_version: int | None, force: bool
    ) -> TokenRecord | None:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT version FROM tokens WHERE realm_id = ?", (record.realm_id,)
                ).fetchone()
                current = None if row is None else int(row[0])
                if not force and current != expected_version:
                    db.execute("ROLLBACK")
                    return None
                stored = record.with_changes(version=(current or 0) + 1)
                self._upsert(db, stored)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return stored

    async def replicated(self, realm_id: str) -> bool:
        return True  # one file, fsync'd on every write: nothing to wait for

    async def delete(self, realm_id: str) -> bool:
        return await asyncio.to_thread(self._delete, realm_id)

    def _delete(self, realm_id: str) -> bool:
        with self._lock:
            cursor = self._conn().execute("DELETE FROM tokens WHERE realm_id = ?", (realm_id,))
        return cursor.rowcount > 0

    async def list_records(self) -> list[TokenRecord]:
        # Read a page at a time: the ciphertexts of 10,000 realms at once would only raise
        # the process's high-water mark, the records are what the caller keeps.
        out: list[TokenRecord] = []
        after = ""
        while rows := await asyncio.to_thread(self._select_page, after):
            for realm_id, version, blob in rows:
                try:
                    out.append(self._open(realm_id, (version, blob)))
                except TokenDecryptError:
                    # One unreadable record must not hide every other realm; get() reports it.
                    continue
            after = rows[-1][0]
        return out

    def _select_page(self, after: str) -> list[tuple[str, int, bytes]]:
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT realm_id, version, record FROM tokens WHERE realm_id > ? "
                    "ORDER BY realm_id LIMIT ?",
                    (after, _PAGE),
                )
                .fetchall()
            )
        return [(str(r[0]), int(r[1]), bytes(r[2])) for r in rows]

    async def durability(self) -> tuple[bool, str]:
        return True, f"SQLite file {self.path} (WAL, synchronous=FULL)"

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
