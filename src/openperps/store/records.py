"""Record integrity, shared by every backend and free of I/O.

Each stored event row carries, besides the envelope, ``batch_last`` (the last version of the
``append`` that wrote it) and a CRC-32 over all of its fields. Together they let a backend tell,
without trusting the storage engine, that

- a row is intact (``event_checksum``), and
- the rows at the end of the log form whole batches (``TailScanner``): a batch is visible
  entirely or not at all, even if a crash or a lying disk tore the last write.

CRC-32 is enough here: it guards against torn writes and bit rot, not against an adversary, and
``zlib.crc32`` costs well under a microsecond for an event, which keeps replay fast.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from openperps.store.envelope import Envelope
from openperps.store.errors import CorruptLog, VersionGap

_EVENT_HEADER = struct.Struct("<qqqI")
_SNAPSHOT_HEADER = struct.Struct("<qI")


def event_checksum(
    version: int, timestamp: int, batch_last: int, type_: bytes, payload: bytes
) -> int:
    """CRC-32 of every field of an event row; the type's length keeps field boundaries fixed."""
    crc = zlib.crc32(_EVENT_HEADER.pack(version, timestamp, batch_last, len(type_)))
    return zlib.crc32(payload, zlib.crc32(type_, crc))


def snapshot_checksum(version: int, state_hash: str, blob: bytes) -> int:
    hash_bytes = state_hash.encode()
    crc = zlib.crc32(_SNAPSHOT_HEADER.pack(version, len(hash_bytes)))
    return zlib.crc32(blob, zlib.crc32(hash_bytes, crc))


EventRow = tuple[int, int, str, bytes, int, int]
"""How a backend stores an event: version, timestamp, type, payload, batch_last, checksum."""


def check_batch(batch: Sequence[Envelope], expected_first: int) -> None:
    """Raise ``VersionGap`` unless ``batch`` holds ``expected_first``, +1, +2, ... exactly."""
    expected = expected_first
    for envelope in batch:
        if envelope.version != expected:
            raise VersionGap(expected, envelope.version)
        expected += 1


_TYPE_BYTES: dict[str, bytes] = {}
_TYPE_CACHE_LIMIT = 4_096  # event types are a small closed set; this only bounds a bug


def _type_bytes(type_: str) -> bytes:
    encoded = type_.encode()
    if len(_TYPE_BYTES) < _TYPE_CACHE_LIMIT:
        _TYPE_BYTES[type_] = encoded
    return encoded


# to_rows and from_rows run once per event on every append and every replay: they inline
# event_checksum and bind names locally, which is worth about a fifth of their time.


def to_rows(batch: Sequence[Envelope]) -> list[EventRow]:
    """Rows for one ``append``: every row records the batch's last version."""
    batch_last = batch[-1].version
    crc32, pack, types = zlib.crc32, _EVENT_HEADER.pack, _TYPE_BYTES
    rows: list[EventRow] = []
    append = rows.append
    for e in batch:
        version, timestamp, type_, payload = e.version, e.timestamp, e.type, e.payload
        tb = types.get(type_) or _type_bytes(type_)
        crc = crc32(payload, crc32(tb, crc32(pack(version, timestamp, batch_last, len(tb)))))
        append((version, timestamp, type_, payload, batch_last, crc))
    return rows


def from_rows(rows: Sequence[EventRow], expected_first: int) -> list[Envelope]:
    """Envelopes for rows read in version order, starting at ``expected_first``.

    Raises ``CorruptLog`` on a checksum mismatch or a missing version: a corrupt record is
    never served.
    """
    crc32, pack, types = zlib.crc32, _EVENT_HEADER.pack, _TYPE_BYTES
    envelopes: list[Envelope] = []
    append = envelopes.append
    expected = expected_first
    try:
        for version, timestamp, type_, payload, batch_last, checksum in rows:
            if version != expected:
                raise CorruptLog(expected, f"version missing (next stored version is {version})")
            tb = types.get(type_) or _type_bytes(type_)
            crc = crc32(payload, crc32(tb, crc32(pack(version, timestamp, batch_last, len(tb)))))
            if crc != checksum:
                raise CorruptLog(version, "checksum mismatch")
            append(Envelope(version, timestamp, type_, payload))
            expected += 1
    except (TypeError, AttributeError, struct.error):
        # A field no longer has its type: SQLite stores whatever it is given.
        raise CorruptLog(expected, "checksum mismatch (a field has the wrong type)") from None
    return envelopes


def check_no_hole(expected: int, next_stored: int | None) -> None:
    """After a short read ending before ``expected``: the log must really end there.

    ``next_stored`` is the lowest stored version at or after ``expected`` (None if none). A
    concurrent append shows up as ``expected`` itself, which is no hole.
    """
    if next_stored is not None and next_stored != expected:
        raise CorruptLog(expected, f"version missing (next stored version is {next_stored})")


def row_is_intact(row: EventRow) -> bool:
    version, timestamp, type_, payload, batch_last, checksum = row
    try:
        return event_checksum(version, timestamp, batch_last, type_.encode(), payload) == checksum
    except (TypeError, AttributeError, struct.error):
        return False  # a field no longer has its type: SQLite stores whatever it is given


class TailScanner:
    """Finds the end of the log's verified prefix, reading rows from the newest down.

    Feed rows in descending version order. The scanner groups them into batches (a batch's
    newest row has ``batch_last == version``) and answers with the last version of the newest
    batch it can verify complete: every row present, intact and agreeing on ``batch_last``, and
    its lower edge confirmed by an intact batch-ending row right below it (or by version 1).
    Without that confirmation a damaged row just below could have belonged to the batch, so it
    is not kept. Everything above the answer is the torn tail. ``feed`` returns the answer as
    soon as it is known, which on a healthy log is after the newest batch and one more row;
    ``finish`` answers when the rows run out.

    Only the tail is judged here: a corrupt row below the newest verified batch is left for
    ``from_rows`` to refuse when someone reads it, since cutting the log there would throw away
    acknowledged events that are still intact.
    """

    def __init__(self) -> None:
        self._batch_last: int | None = None  # newest version of the batch being checked
        self._batch_ok = False
        self._expected: int | None = None  # the version the next row must have
        self.rows_seen = 0

    def feed(self, row: EventRow) -> int | None:
        version, batch_last = row[0], row[4]
        self.rows_seen += 1
        contiguous = self._expected is None or version == self._expected
        self._expected = version - 1
        intact = row_is_intact(row)
        if intact and batch_last == version:
            # The newest row of a batch: the batch above it, if any, is complete.
            if self._batch_last is not None and self._batch_ok and contiguous:
                return self._batch_last
            self._batch_last = version
            self._batch_ok = True
        elif not intact or not contiguous or batch_last != self._batch_last:
            self._batch_ok = False
        return None

    def finish(self) -> int:
        """The verified end once every row down to version 1 has been fed.

        Raises ``CorruptLog`` when not one batch verifies: that is no torn tail but a broken
        database, and it is for an operator, not for start-up, to decide what to throw away.
        """
        if self.rows_seen == 0:
            return 0
        if self._batch_last is not None and self._batch_ok and self._expected == 0:
            return self._batch_last
        raise CorruptLog(
            self._expected + 1 if self._expected is not None else 0,
            "no intact batch found anywhere in the log",
        )
