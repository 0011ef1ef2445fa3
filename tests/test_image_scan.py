"""The image check's secret scan must find what it looks for, or its green means nothing.

`deploy/image/scan_image.py` reads `podman save` archives (a tar of layer tars); these tests
build such archives by hand, with and without a secret or a build-only file in a layer.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

SCAN = Path(__file__).resolve().parent.parent / "deploy" / "image" / "scan_image.py"


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _image(tmp: Path, layer: dict[str, bytes]) -> Path:
    path = tmp / "image.tar"
    path.write_bytes(_tar_of({"abc123.tar": _tar_of(layer), "manifest.json": b"[]"}))
    return path


def _needles(tmp: Path) -> Path:
    folder = tmp / "needles"
    folder.mkdir()
    (folder / "QBO_REFRESH_TOKEN").write_text("RT-0123456789abcdef-refresh\n")
    (folder / "QBO_ADMIN_TOKEN").write_text("admin-0123456789abcdef")
    (folder / "token-key").write_text("a2V5LWtleS1rZXkta2V5LWtleS1rZXkta2V5LWtleQ==")
    return folder


def _scan(*args: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCAN), *map(str, args)], capture_output=True, text=True, check=False
    )


def _setup(tmp: Path, layer: dict[str, bytes]) -> tuple[Path, Path, Path, Path]:
    history = tmp / "history.txt"
    history.write_text("/bin/sh -c pip install .\n")
    ca = tmp / "ca.crt"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * 2000 + b"\n")
    return _image(tmp, layer), history, _needles(tmp), ca


def test_a_clean_image_passes(tmp_path: Path) -> None:
    image, history, needles, ca = _setup(tmp_path, {"opt/app/main.py": b"print('hi')\n"})
    result = _scan(image, history, needles, ca)
    assert result.returncode == 0, result.stdout


def test_a_token_in_a_layer_is_found_and_not_printed(tmp_path: Path) -> None:
    layer = {"var/lib/leak.db": b"xx RT-0123456789abcdef-refresh yy"}
    image, history, needles, ca = _setup(tmp_path, layer)
    result = _scan(image, history, needles, ca)
    assert result.returncode == 1
    assert "QBO_REFRESH_TOKEN in abc123.tar:var/lib/leak.db" in result.stdout
    assert "RT-0123456789abcdef" not in result.stdout


def test_a_secret_in_the_history_is_found(tmp_path: Path) -> None:
    image, history, needles, ca = _setup(tmp_path, {"opt/app/main.py": b""})
    history.write_text("/bin/sh -c echo admin-0123456789abcdef > /x\n")
    result = _scan(image, history, needles, ca)
    assert result.returncode == 1
    assert "QBO_ADMIN_TOKEN in history" in result.stdout


def test_build_only_files_are_found_even_empty(tmp_path: Path) -> None:
    image, history, needles, ca = _setup(tmp_path, {"etc/pip.conf": b""})
    result = _scan(image, history, needles, ca)
    assert result.returncode == 1
    assert "etc/pip.conf" in result.stdout


def test_a_copied_ca_bundle_is_found(tmp_path: Path) -> None:
    ca_bytes = b"-----BEGIN CERTIFICATE-----\n" + b"A" * 2000 + b"\n"
    image, history, needles, ca = _setup(tmp_path, {"usr/local/share/ca.pem": ca_bytes})
    result = _scan(image, history, needles, ca)
    assert result.returncode == 1
    assert "CA bundle" in result.stdout


def test_logs_are_scanned_too(tmp_path: Path) -> None:
    needles = _needles(tmp_path)
    log = tmp_path / "serve.log"
    log.write_text('{"event": "x", "token": "admin-0123456789abcdef"}\n')
    result = _scan("--logs", log, "--", needles)
    assert result.returncode == 1
    assert "QBO_ADMIN_TOKEN" in result.stdout


def test_too_few_needles_refuse_to_pass(tmp_path: Path) -> None:
    folder = tmp_path / "needles"
    folder.mkdir()
    (folder / "short").write_text("abc")
    log = tmp_path / "serve.log"
    log.write_text("nothing\n")
    result = _scan("--logs", log, "--", folder)
    assert result.returncode != 0
