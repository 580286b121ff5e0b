"""What only the SQLite log does (store/sqlite.py): its file, its pragmas, its real faults."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from openperps.store import (
    DEFAULT_PATH,
    CorruptLog,
    Envelope,
    GroupCommitWriter,
    LogInUse,
    SqliteEventLog,
    StorageFull,
    StorageLocked,
    StorageUnavailable,
    StoreErrorCode,
)

from .helpers import assert_log, envelopes


class SmallDiskLog(SqliteEventLog):
    """A SQLite log on a "disk" that can be filled up: ``PRAGMA max_page_count``.

    ``max_pages = 1`` means "no room to grow", since SQLite never caps below the current size.
    """

    max_pages = 2**31 - 2

    def _append(self, batch: Sequence[Envelope]) -> None:
        self._write_conn.execute(f"PRAGMA max_page_count = {self.max_pages}")
        super()._append(batch)


def big_envelopes(first: int, count: int) -> list[Envelope]:
    return [Envelope(v, 0, "Big", bytes(200)) for v in range(first, first + count)]


async def test_the_default_database_is_a_file_under_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with SqliteEventLog() as log:
        await log.append(envelopes(1, 1))
    assert Path("data/events.sqlite3") == DEFAULT_PATH
    assert (tmp_path / "data" / "events.sqlite3").is_file()


async def test_the_database_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    async with SqliteEventLog(path) as log:
        assert log.synchronous == "FULL"
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_a_full_disk_fails_the_batch_whole_and_the_writer_recovers(tmp_path: Path) -> None:
    async with SmallDiskLog(tmp_path / "events.sqlite3") as log, GroupCommitWriter(log) as writer:
        await writer.submit(big_envelopes(1, 10))
        log.max_pages = 1
        with pytest.raises(StorageFull) as full:
            await writer.submit(big_envelopes(11, 5_000))
        assert full.value.code == StoreErrorCode.STORAGE_FULL
        assert "full" in str(full.value)
        await assert_log(log, big_envelopes(1, 10))

        log.max_pages = 2**31 - 2
        await writer.submit(big_envelopes(11, 5_000))
        await assert_log(log, big_envelopes(1, 5_010))


async def test_a_locked_database_fails_the_batch_and_the_writer_recovers(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    async with (
        SqliteEventLog(path, busy_timeout_ms=50) as log,
        GroupCommitWriter(log) as writer,
    ):
        await writer.submit(envelopes(1, 3))
        other_process = sqlite3.connect(path, isolation_level=None)
        other_process.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageLocked) as locked:
            await writer.submit(envelopes(4, 3))
        assert locked.value.code == StoreErrorCode.STORAGE_LOCKED
        other_process.execute("ROLLBACK")
        other_process.close()

        await writer.submit(envelopes(4, 3))
        await assert_log(log, envelopes(1, 6))


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptLog, match="not a database"):
        await SqliteEventLog(path).open()


async def test_an_unusable_location_is_reported_as_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StorageUnavailable):
        await SqliteEventLog(tmp_path / "a-file" / "events.sqlite3").open()


async def test_a_row_whose_payload_changed_type_counts_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    async with SqliteEventLog(path) as log:
        await log.append(envelopes(1, 2))
        await log.append(envelopes(3, 2))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE events SET payload = 'text now' WHERE version = 4")
    conn.close()
    async with SqliteEventLog(path) as log:
        await assert_log(log, envelopes(1, 2))


async def test_checkpoints_run_in_the_background_not_in_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    # 4 pages: a background checkpoint after every ~16 KB appended
    async with SqliteEventLog(path, checkpoint_pages=4) as log:
        # the commit path only checkpoints past four times that, as a safety net
        pages = await log._on_writer(
            lambda: log._write_conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        )
        assert pages == (16,)
        written: list[Envelope] = []
        for _ in range(40):
            batch = big_envelopes(len(written) + 1, 20)  # about 5 KB a batch
            await log.append(batch)
            written += batch
        if log._checkpointing is not None:
            await log._checkpointing
        assert log.checkpoints >= 5
        await assert_log(log, written)
    # everything is in the database file after close, whatever the WAL held
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (len(written),)
    conn.close()


async def test_small_commits_are_checkpointed_in_the_background_too(tmp_path: Path) -> None:
    """Each commit adds at least a whole page to the WAL: one small envelope a commit (a
    paced trader) reaches the checkpoint mark as surely as big batches do."""
    async with SqliteEventLog(tmp_path / "events.sqlite3", checkpoint_pages=8) as log:
        for version in range(1, 41):
            await log.append(envelopes(version, 1))
            if log._checkpointing is not None:
                await log._checkpointing
        assert log.checkpoints >= 3
        await assert_log(log, envelopes(1, 40))


async def test_close_waits_for_a_running_checkpoint(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.sqlite3", checkpoint_pages=1)
    await log.open()
    batch = big_envelopes(1, 50)
    await log.append(batch)
    assert log._checkpointing is not None  # started, maybe not finished
    await log.close()
    assert log._checkpointing is None
    assert log.checkpoints == 1, "close waited for it, and it copied the WAL back"
    async with SqliteEventLog(tmp_path / "events.sqlite3") as again:
        await assert_log(again, batch)


async def test_a_checkpoint_that_copies_nothing_is_not_counted(tmp_path: Path) -> None:
    """A reader holding a snapshot from before the appends keeps every page in the WAL: the
    background checkpoints run, copy nothing and are not counted; once it lets go, they are."""
    path = tmp_path / "events.sqlite3"
    written = big_envelopes(1, 1)
    async with SqliteEventLog(path) as log:
        await log.append(written)  # closing copies the WAL back and removes it
    async with SqliteEventLog(path, checkpoint_pages=4) as log:

        async def append(count: int) -> int:
            """Append ``count`` batches of about 5 KB; the checkpoints started meanwhile."""
            started = 0
            for _ in range(count):
                batch = big_envelopes(len(written) + 1, 20)
                await log.append(batch)
                written.extend(batch)
                if log._checkpointing is not None:
                    started += 1
                    await log._checkpointing
            return started

        reader = sqlite3.connect(path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,)
            assert await append(20) >= 5, "background checkpoints ran"
            assert log.checkpoints == 0, "none could copy a page: none is counted"
        finally:
            reader.close()
        assert await append(10) >= 2
        assert log.checkpoints >= 2, "with the reader gone, they copy and are counted"
        await assert_log(log, written)


async def test_a_second_process_cannot_write_the_same_file(tmp_path: Path) -> None:
    """One log, one writer: a second `serve` (or `reindex`) on the file a running exchange
    writes is refused at once; the lock goes with the process that held it."""
    path = tmp_path / "events.sqlite3"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from openperps.store import SqliteEventLog\n"
            "async def main():\n"
            f"    log = SqliteEventLog({str(path)!r})\n"
            "    await log.open()\n"
            "    print('open', flush=True)\n"
            "    await asyncio.sleep(60)\n"
            "asyncio.run(main())\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        second = SqliteEventLog(path)
        with pytest.raises(LogInUse) as refused:
            await second.open()
        assert refused.value.code == StoreErrorCode.LOG_IN_USE and str(path) in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    async with SqliteEventLog(path) as after:  # the holder died: its lock went with it
        assert await after.last_version() == 0
