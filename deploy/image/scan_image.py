"""Look for secrets where they must never be: an image's layers and history, or a log.

The needles are the real secret values of one check run, one file each in NEEDLES_DIR (tokens
the simulator issued, the admin token, the token keys the gateway generated), plus the build's
own credentials (the host CA bundle and pip configuration, mounted read-only for the build and
never to be copied into a layer).

  scan_image.py IMAGE.tar HISTORY.txt NEEDLES_DIR CA_BUNDLE
  scan_image.py --logs LOG... -- NEEDLES_DIR
Exits 1 naming what it found (never printing the value itself).
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

# Files that would mean the build's setup leaked into the image.
FORBIDDEN_PATHS = (
    "etc/pip.conf",
    "run/secrets/pip.conf",
    "run/secrets/ca.crt",
    "root/.config/pip/pip.conf",
)


def needles(folder: Path) -> dict[str, bytes]:
    found = {path.name: path.read_bytes().strip() for path in sorted(folder.iterdir())}
    if len(found) < 3 or any(len(value) < 16 for value in found.values()):
        raise SystemExit(f"too few or too short needles in {folder}: the scan would prove nothing")
    return found


def scan_blob(name: str, data: bytes, wanted: dict[str, bytes], hits: list[str]) -> None:
    for label, value in wanted.items():
        if value and value in data:
            hits.append(f"{label} in {name}")


def layer_files(image_tar: Path) -> list[tuple[str, bytes]]:
    """Every regular file of every layer, as (layer/path, content)."""
    files: list[tuple[str, bytes]] = []
    with tarfile.open(image_tar) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            blob = outer.extractfile(member)
            if blob is None:
                continue
            data = blob.read()
            files.append((member.name, data))
            if not tarfile.is_tarfile(io.BytesIO(data)):
                continue
            with tarfile.open(fileobj=io.BytesIO(data)) as inner:
                for m in inner.getmembers():
                    f = inner.extractfile(m) if m.isfile() else None
                    if f is not None:
                        files.append((f"{member.name}:{m.name}", f.read()))
    return files


def main(argv: list[str]) -> int:
    hits: list[str] = []
    if argv[:1] == ["--logs"]:
        split = argv.index("--")
        logs, folder = argv[1:split], argv[split + 1]
        wanted = needles(Path(folder))
        for log in logs:
            scan_blob(log, Path(log).read_bytes(), wanted, hits)
    else:
        image_tar, history, folder, ca = argv
        wanted = needles(Path(folder))
        ca_text = Path(ca).read_bytes()
        scan_blob("history", Path(history).read_bytes(), wanted, hits)
        for name, data in layer_files(Path(image_tar)):
            scan_blob(name, data, wanted, hits)
            if name.split(":")[-1].lstrip("./") in FORBIDDEN_PATHS:
                hits.append(f"build-only file {name} was copied into the image")
            if len(ca_text) > 1000 and data == ca_text:
                hits.append(f"the host's CA bundle was copied into the image as {name}")
    for hit in hits:
        print(f"found: {hit}")
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
