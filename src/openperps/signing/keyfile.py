"""Key files for the CLI: one JSON object, readable by its owner only.

    {"private_key": "0x..", "public_key": "0x..", "address": "0x.."}

``save_key`` creates the file with mode 0600 atomically (``O_CREAT | O_EXCL``, so neither an
existing file nor a symlink planted at the path is ever written through) and refuses to replace
a file unless asked. ``load_key`` refuses, as ssh does, a file that group or others have any
permission on, and checks that the public key and address, when present, match the private key.
The permission rules apply on POSIX systems only.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Final

from openperps.signing.errors import SigningError, SigningErrorCode
from openperps.signing.keys import PrivateKey

FILE_MODE: Final = 0o600
_MAX_SIZE: Final = 64 * 1024
_POSIX: Final = os.name == "posix"


def _contents(key: PrivateKey) -> bytes:
    document = {
        "private_key": key.to_hex(),
        "public_key": key.public_key_hex,
        "address": key.address,
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if _POSIX:
        os.fchmod(fd, FILE_MODE)  # the umask may have narrowed it; say exactly what we mean
    os.fsync(fd)


def save_key(path: str | os.PathLike[str], key: PrivateKey, *, overwrite: bool = False) -> None:
    """Write ``key`` to ``path`` with mode 0600, creating missing directories with 0700.

    Raises ``SigningError``: KEY_FILE_EXISTS when the path exists and ``overwrite`` is false,
    KEY_FILE_UNWRITABLE when the file system refuses.
    """
    target = Path(path)
    data = _contents(key)
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not overwrite:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            try:
                fd = os.open(target, flags, FILE_MODE)
            except FileExistsError:
                raise SigningError(
                    SigningErrorCode.KEY_FILE_EXISTS,
                    f"{target} already exists; refusing to overwrite a key",
                ) from None
            try:
                _write_all(fd, data)
            except BaseException:
                os.close(fd)
                target.unlink(missing_ok=True)
                raise
            os.close(fd)
            return
        # replace atomically: a reader sees the old key or the new one, never half of either
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            _write_all(fd, data)
            os.close(fd)
            fd = -1
            os.replace(temporary, target)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise SigningError(
            SigningErrorCode.KEY_FILE_UNWRITABLE, f"cannot write {target}: {error.strerror}"
        ) from error


def load_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Read a key file written by ``save_key`` (or by hand in the same shape).

    Raises ``SigningError``: KEY_FILE_NOT_FOUND, KEY_FILE_TOO_OPEN (group or others have any
    permission; fix with ``chmod 600``) or KEY_FILE_MALFORMED.
    """
    source = Path(path)
    try:
        fd = os.open(source, os.O_RDONLY)
    except FileNotFoundError:
        raise SigningError(
            SigningErrorCode.KEY_FILE_NOT_FOUND,
            f"{source} does not exist; create one with `openperps keygen`",
        ) from None
    except OSError as error:
        raise SigningError(
            SigningErrorCode.KEY_FILE_MALFORMED, f"cannot read {source}: {error.strerror}"
        ) from error
    try:
        info = os.fstat(fd)  # of the file opened, not of whatever the path names later
        if not stat.S_ISREG(info.st_mode):
            raise SigningError(SigningErrorCode.KEY_FILE_MALFORMED, f"{source} is not a file")
        mode = stat.S_IMODE(info.st_mode)
        if _POSIX and mode & 0o077:
            raise SigningError(
                SigningErrorCode.KEY_FILE_TOO_OPEN,
                f"permissions {mode:04o} for {source} are too open: other users could read the "
                f"key; run `chmod 600 {source}`",
            )
        chunks: list[bytes] = []
        size = 0
        while size <= _MAX_SIZE and (chunk := os.read(fd, _MAX_SIZE + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
    except OSError as error:
        raise SigningError(
            SigningErrorCode.KEY_FILE_MALFORMED, f"cannot read {source}: {error.strerror}"
        ) from error
    finally:
        os.close(fd)
    return _parse(source, raw)


def _parse(source: Path, raw: bytes) -> PrivateKey:
    def malformed(why: str) -> SigningError:
        return SigningError(SigningErrorCode.KEY_FILE_MALFORMED, f"{source}: {why}")

    if len(raw) > _MAX_SIZE:
        raise malformed("too large for a key file")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise malformed("not JSON") from None
    if not isinstance(document, dict):
        raise malformed("expected a JSON object")
    private = document.get("private_key")
    if not isinstance(private, str):
        raise malformed('no "private_key" string')
    try:
        key = PrivateKey.from_hex(private)
    except SigningError:
        raise malformed('"private_key" must be 0x followed by 64 hex digits') from None
    expected = {"public_key": key.public_key_hex, "address": key.address}
    for field, value in expected.items():
        if field in document:
            given = document[field]
            if not isinstance(given, str) or given.lower() != value:
                raise malformed(f'"{field}" does not belong to "private_key"')
    return key
