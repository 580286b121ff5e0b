"""Key files: 0600 on creation, no overwriting by accident, ssh's refusal of open files."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from openperps.signing import (
    PrivateKey,
    SigningError,
    SigningErrorCode,
    load_key,
    save_key,
)
from tests.signing.vectors import APTOS_ADDRESS, APTOS_PRIVATE_KEY, APTOS_PUBLIC_KEY

C = SigningErrorCode
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def code_of(path: Path) -> C:
    with pytest.raises(SigningError) as caught:
        load_key(path)
    return caught.value.code


def write(path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_save_then_load(tmp_path: Path) -> None:
    key = PrivateKey.from_hex(APTOS_PRIVATE_KEY)
    path = tmp_path / "key.json"
    save_key(path, key)
    assert json.loads(path.read_text()) == {
        "private_key": APTOS_PRIVATE_KEY,
        "public_key": APTOS_PUBLIC_KEY,
        "address": APTOS_ADDRESS,
    }
    assert load_key(path) == key
    assert load_key(str(path)) == key


@posix_only
def test_saved_with_0600_whatever_the_umask(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "key.json"
    save_key(path, PrivateKey.generate())
    assert mode_of(path) == 0o600


@posix_only
def test_missing_directories_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".openperps" / "key.json"
    save_key(path, PrivateKey.generate())
    assert mode_of(path.parent) == 0o700
    load_key(path)


def test_an_existing_file_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    first = PrivateKey.generate()
    save_key(path, first)
    with pytest.raises(SigningError) as caught:
        save_key(path, PrivateKey.generate())
    assert caught.value.code is C.KEY_FILE_EXISTS
    assert load_key(path) == first


@posix_only
def test_overwrite_when_asked_replaces_and_tightens(tmp_path: Path, permissive_umask: None) -> None:
    path = write(tmp_path / "key.json", "old", mode=0o644)
    second = PrivateKey.generate()
    save_key(path, second, overwrite=True)
    assert load_key(path) == second
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json"]  # no temporary left


@posix_only
def test_a_symlink_is_never_written_through(tmp_path: Path) -> None:
    victim = write(tmp_path / "victim", "precious", mode=0o644)
    link = tmp_path / "key.json"
    link.symlink_to(victim)
    with pytest.raises(SigningError) as caught:
        save_key(link, PrivateKey.generate())
    assert caught.value.code is C.KEY_FILE_EXISTS
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SigningError):
        save_key(dangling, PrivateKey.generate())
    assert not (tmp_path / "nowhere").exists()
    save_key(link, PrivateKey.generate(), overwrite=True)  # replaces the link, not its target
    assert victim.read_text() == "precious"
    assert not link.is_symlink()


def test_an_unwritable_place(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SigningError) as caught:
        save_key(blocker / "key.json", PrivateKey.generate())
    assert caught.value.code is C.KEY_FILE_UNWRITABLE


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SigningError) as caught:
        load_key(tmp_path / "absent.json")
    assert caught.value.code is C.KEY_FILE_NOT_FOUND
    assert "openperps keygen" in caught.value.detail


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o666])
def test_a_file_others_can_touch_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key.json"
    save_key(path, PrivateKey.generate())
    path.chmod(mode)
    with pytest.raises(SigningError) as caught:
        load_key(path)
    assert caught.value.code is C.KEY_FILE_TOO_OPEN
    assert f"{mode:04o}" in caught.value.detail
    assert "chmod 600" in caught.value.detail


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_are_fine(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key.json"
    save_key(path, PrivateKey.generate())
    path.chmod(mode)
    load_key(path)


@posix_only
def test_a_symlink_to_a_private_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    key = PrivateKey.generate()
    save_key(path, key)
    (tmp_path / "link.json").symlink_to(path)
    assert load_key(tmp_path / "link.json") == key


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    assert code_of(directory) is C.KEY_FILE_MALFORMED


GOOD = {"private_key": APTOS_PRIVATE_KEY, "public_key": APTOS_PUBLIC_KEY, "address": APTOS_ADDRESS}

MALFORMED: list[tuple[str, str | bytes]] = [
    ("empty", ""),
    ("not json", "private_key=0x11"),
    ("truncated", json.dumps(GOOD)[:-5]),
    ("not utf-8", b"\xff\xfe{}"),
    ("a list", json.dumps([APTOS_PRIVATE_KEY])),
    ("a string", json.dumps(APTOS_PRIVATE_KEY)),
    ("no private key", json.dumps({"public_key": APTOS_PUBLIC_KEY})),
    ("private key a number", json.dumps({"private_key": 17})),
    ("private key short", json.dumps({"private_key": APTOS_PRIVATE_KEY[:-2]})),
    ("private key not hex", json.dumps({"private_key": "0x" + "z" * 64})),
    ("wrong public key", json.dumps({**GOOD, "public_key": "0x" + "00" * 32})),
    ("wrong address", json.dumps({**GOOD, "address": "0x" + "00" * 32})),
    ("address not text", json.dumps({**GOOD, "address": None})),
    ("huge", "{" + " " * 70_000 + "}"),
]


@pytest.mark.parametrize(("what", "text"), MALFORMED, ids=[w for w, _ in MALFORMED])
def test_malformed_files(tmp_path: Path, what: str, text: str | bytes) -> None:
    path = write(tmp_path / "key.json", text)
    with pytest.raises(SigningError) as caught:
        load_key(path)
    assert caught.value.code is C.KEY_FILE_MALFORMED
    assert str(path) in caught.value.detail
    assert APTOS_PRIVATE_KEY[2:] not in str(caught.value)  # never echo the secret


def test_only_the_private_key_is_required(tmp_path: Path) -> None:
    path = write(tmp_path / "key.json", json.dumps({"private_key": APTOS_PRIVATE_KEY}))
    assert load_key(path).address == APTOS_ADDRESS


def test_case_of_the_derived_fields_does_not_matter(tmp_path: Path) -> None:
    document = {**GOOD, "address": APTOS_ADDRESS.upper().replace("0X", "0x")}
    path = write(tmp_path / "key.json", json.dumps(document))
    assert load_key(path).address == APTOS_ADDRESS


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(SigningError) as caught:
        save_key(tmp_path / "key.json", PrivateKey.generate(), overwrite=overwrite)
    assert caught.value.code is C.KEY_FILE_UNWRITABLE
    assert "No space left on device" in caught.value.detail
    assert list(tmp_path.iterdir()) == []
