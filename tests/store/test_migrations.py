"""Schema migrations (store/migrations.py)."""

from __future__ import annotations

import pytest

from openperps.store import SCHEMA_VERSION, SchemaTooNew
from openperps.store.migrations import MIGRATIONS, Migration, pending


def test_migrations_are_numbered_one_by_one_and_cover_both_dialects() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == SCHEMA_VERSION
    assert all(m.sqlite and m.postgres for m in MIGRATIONS)


def test_pending_lists_what_a_database_still_needs() -> None:
    steps = (
        Migration(1, "one", ("a",), ("a",)),
        Migration(2, "two", ("b",), ("b",)),
        Migration(3, "three", ("c",), ("c",)),
    )
    assert [m.version for m in pending(0, steps)] == [1, 2, 3]
    assert [m.version for m in pending(2, steps)] == [3]
    assert pending(3, steps) == []


def test_a_database_newer_than_the_code_is_refused() -> None:
    with pytest.raises(SchemaTooNew) as refused:
        pending(SCHEMA_VERSION + 1)
    assert refused.value.found == SCHEMA_VERSION + 1
    assert refused.value.supported == SCHEMA_VERSION
