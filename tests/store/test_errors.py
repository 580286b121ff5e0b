"""The store's error codes (store/errors.py) are stable: written out, unique, in 2300-2349."""

from __future__ import annotations

from openperps.store import errors


def test_each_error_keeps_its_published_code() -> None:
    assert {cls.__name__: int(cls.code) for cls in published()} == {
        "StoreError": 2300,
        "VersionGap": 2301,
        "CorruptLog": 2302,
        "SchemaTooNew": 2303,
        "StorageFull": 2304,
        "StorageLocked": 2305,
        "StorageUnavailable": 2306,
        "LogClosed": 2307,
        "SnapshotAhead": 2308,
        "UnsupportedURL": 2309,
        "LogInUse": 2310,
    }


def test_codes_are_unique_and_in_the_store_block() -> None:
    codes = [int(code) for code in errors.StoreErrorCode]
    assert len(codes) == len(set(codes))
    assert all(2300 <= code <= 2349 for code in codes)


def test_the_message_starts_with_the_code() -> None:
    assert str(errors.VersionGap(4, 6)) == "2301: expected version 4, got 6"


def published() -> list[type[errors.StoreError]]:
    return [errors.StoreError, *errors.StoreError.__subclasses__()]
