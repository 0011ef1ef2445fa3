"""The spill file: durable, private, encrypted and realm-bound; unreadable files kept."""

from __future__ import annotations

import stat
from pathlib import Path

from qbo_gateway.tokens.crypto import TokenCipher, generate_key
from qbo_gateway.tokens.records import TokenRecord
from qbo_gateway.tokens.spill import SPILL_FILE_NAME, Intent, SpillFile

KEY = generate_key()
REFRESH = "RT1-spill-secret-0123456789abcdef"


def pair(realm: str, version: int) -> TokenRecord:
    return TokenRecord(
        realm_id=realm,
        access_token=f"AT-spill-secret-{version}",
        refresh_token=f"{REFRESH}-{version}",
        access_expires_at=1_800_003_600.0,
        version=version,
        updated_at=1_800_000_000.0 + version,
    )


async def test_pairs_and_intents_survive_a_new_process(tmp_path: Path) -> None:
    spill = SpillFile.in_dir(tmp_path, TokenCipher(KEY))
    await spill.keep(pair("1001", 3))
    await spill.begin(Intent("2002", 5, 1_800_000_000.0))
    path = tmp_path / SPILL_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert REFRESH.encode() not in raw and b"AT-spill-secret" not in raw
    again = SpillFile.in_dir(tmp_path, TokenCipher(KEY))
    assert again.get("1001") == pair("1001", 3)
    assert again.intents() == [Intent("2002", 5, 1_800_000_000.0)]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


async def test_released_only_when_the_store_has_that_version(tmp_path: Path) -> None:
    spill = SpillFile.in_dir(tmp_path, TokenCipher(KEY))
    await spill.keep(pair("1001", 3))
    await spill.release("1001", 2)  # the store holds an older pair: ours stays
    assert spill.get("1001") == pair("1001", 3)
    await spill.release("1001", 3)
    assert spill.get("1001") is None
    assert not (tmp_path / SPILL_FILE_NAME).exists()  # nothing pending: no file


async def test_a_pair_moved_to_another_realm_is_not_read(tmp_path: Path) -> None:
    spill = SpillFile.in_dir(tmp_path, TokenCipher(KEY))
    await spill.keep(pair("1001", 3))
    path = tmp_path / SPILL_FILE_NAME
    path.write_text(path.read_text().replace('"1001"', '"2002"'))
    again = SpillFile.in_dir(tmp_path, TokenCipher(KEY))
    assert again.get("2002") is None and again.get("1001") is None
    await again.keep(pair("3003", 1))  # the unreadable entry is kept, not dropped
    assert '"2002"' in path.read_text()


async def test_a_corrupt_file_is_set_aside_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / SPILL_FILE_NAME
    path.write_text("{not json")
    spill = SpillFile.in_dir(tmp_path, TokenCipher(KEY))
    assert spill.realms() == []
    assert (tmp_path / (SPILL_FILE_NAME + ".unreadable")).read_text() == "{not json"
