"""Record integrity (store/records.py): checksums, batch checks, and the torn-tail scanner."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openperps.store import CorruptLog, Envelope, VersionGap
from openperps.store.records import (
    EventRow,
    TailScanner,
    check_batch,
    event_checksum,
    from_rows,
    snapshot_checksum,
    to_rows,
)

from .helpers import envelopes


def test_every_field_is_covered_by_the_checksum() -> None:
    base = (7, 1_000, 9, b"Fill", b"body")
    changed = [
        (8, 1_000, 9, b"Fill", b"body"),
        (7, 1_001, 9, b"Fill", b"body"),
        (7, 1_000, 10, b"Fill", b"body"),
        (7, 1_000, 9, b"Fil", b"lbody"),  # the same bytes, split differently
        (7, 1_000, 9, b"Fill", b"bodz"),
    ]
    assert all(event_checksum(*c) != event_checksum(*base) for c in changed)
    assert snapshot_checksum(5, "ab", b"c") != snapshot_checksum(5, "a", b"bc")


def test_rows_record_the_last_version_of_their_batch() -> None:
    rows = to_rows(envelopes(4, 3))
    assert [row[4] for row in rows] == [6, 6, 6]
    assert from_rows(rows, 4) == envelopes(4, 3)


def test_reading_rows_refuses_a_bad_checksum_and_a_missing_version() -> None:
    rows = to_rows(envelopes(1, 5))
    tampered = [*rows[:2], (*rows[2][:3], b"other", *rows[2][4:]), *rows[3:]]
    with pytest.raises(CorruptLog, match="version 3: checksum mismatch"):
        from_rows(tampered, 1)
    with pytest.raises(CorruptLog, match="version 3: version missing"):
        from_rows(rows[:2] + rows[3:], 1)
    with pytest.raises(CorruptLog, match="version 2: checksum mismatch"):
        from_rows([rows[0], (*rows[1][:3], "a text payload", *rows[1][4:])], 1)  # type: ignore[list-item]


def test_check_batch_wants_consecutive_versions_from_the_expected_one() -> None:
    check_batch(envelopes(3, 4), 3)
    with pytest.raises(VersionGap, match="expected version 4, got 5"):
        check_batch([*envelopes(3, 1), *envelopes(5, 1)], 3)
    with pytest.raises(VersionGap, match="expected version 2, got 3"):
        check_batch(envelopes(3, 1), 2)


# -- the tail scanner, against a reference model ---------------------------------------------


def scan(rows_descending: list[EventRow]) -> int:
    scanner = TailScanner()
    for row in rows_descending:
        keep = scanner.feed(row)
        if keep is not None:
            return keep
    return scanner.finish()


def build(batch_sizes: list[int]) -> tuple[list[EventRow], list[range]]:
    rows: list[EventRow] = []
    batches: list[range] = []
    for size in batch_sizes:
        first = len(rows) + 1
        rows += to_rows(envelopes(first, size))
        batches.append(range(first, first + size))
    return rows, batches


def expected_keep(batches: list[range], deleted: set[int], corrupt: set[int]) -> int | None:
    """The newest batch that is verified complete: all its rows present and intact, and its
    lower edge confirmed by an intact row right below it (or it starts the log). None: no such
    batch although rows remain."""
    damaged = deleted | corrupt
    for batch in reversed(batches):
        below = batch.start - 1
        if not damaged & set(batch) and (below == 0 or below not in damaged):
            return batch.stop - 1
    everything = {v for b in batches for v in b}
    return 0 if everything <= deleted else None


@given(
    batch_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    damage=st.lists(st.tuples(st.integers(0, 12), st.booleans()), max_size=6),
)
def test_the_tail_scanner_keeps_the_newest_verified_batch(
    batch_sizes: list[int], damage: list[tuple[int, bool]]
) -> None:
    rows, batches = build(batch_sizes)
    top = len(rows)
    deleted = {top - back for back, is_delete in damage if is_delete and back < top}
    corrupt = {top - back for back, is_delete in damage if not is_delete and back < top} - deleted
    stored = [
        (*row[:3], row[3] + b"!", *row[4:]) if row[0] in corrupt else row
        for row in rows
        if row[0] not in deleted
    ]
    expected = expected_keep(batches, deleted, corrupt)
    if expected is None:
        with pytest.raises(CorruptLog):
            scan(stored[::-1])
    else:
        assert scan(stored[::-1]) == expected


def test_the_tail_scanner_reads_only_the_newest_batch_of_a_healthy_log() -> None:
    rows, _ = build([100, 100, 50])
    scanner = TailScanner()
    answers = [scanner.feed(row) for row in rows[::-1][:51]]
    assert answers[-1] == 250
    assert scanner.rows_seen == 51


def test_an_empty_log_has_no_tail() -> None:
    assert TailScanner().finish() == 0


def test_envelopes_are_frozen() -> None:
    envelope = Envelope(1, 2, "T", b"")
    with pytest.raises(AttributeError):
        envelope.version = 3  # type: ignore[misc]
