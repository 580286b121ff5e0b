"""Event-log throughput: durable appends through group commit against a bare executemany.

Workload: batches of 1 000 events with ~150-byte payloads, as a busy exchange's sequencer hands
them over. The sequencer does not wait for one batch's acknowledgement before handling the next
command, so up to ``--in-flight`` batches are queued at once; the writer commits whatever is
queued as one transaction (SQLite: WAL, synchronous=FULL, one fsync per group).

Baseline, measured in the same run on the same storage: the very same rows (checksums already
computed) inserted by one bare ``executemany`` in one transaction into an identical empty table.

Then: replay (read every event back through ``EventLog.read``, checksums verified) and restart
with 1 000 000 events in the log: open the log (schema check, tail verification), load the
newest snapshot (a blob near the end) and read the events after it.

Prints figures, then as its last line one JSON object:
{"bench": "store", "backend": ..., "events_per_s": N, "baseline_rows_per_s": N, "ratio": R,
 "replay_events_per_s": N, "restart_s_1m": S}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from openperps.store import Envelope, EventLog, GroupCommitWriter, SqliteEventLog
from openperps.store.postgres import PostgresEventLog
from openperps.store.records import EventRow, to_rows
from openperps.store.sqlite import DEFAULT_CHECKPOINT_PAGES, Synchronous
from percentiles import percentile

PAYLOAD_BYTES = 150
TYPES = ("OrderAccepted", "TradeExecuted", "PositionChanged", "BalanceChanged", "OrderCancelled")


def make_batches(first: int, events: int, batch_size: int) -> list[list[Envelope]]:
    """Batches of envelopes with distinct ~150-byte payloads, as the engine would encode them."""
    batches: list[list[Envelope]] = []
    for start in range(first, first + events, batch_size):
        batch = []
        for v in range(start, min(start + batch_size, first + events)):
            body = b'{"type":"%s","version":%d,"market":1338,"price":"7012.5","size":"0.42"' % (
                TYPES[v % 5].encode(),
                v,
            )
            payload = body + b',"pad":"' + b"x" * max(0, PAYLOAD_BYTES - len(body) - 10) + b'"}'
            batch.append(Envelope(v, 1_700_000_000_000 + v // 10, TYPES[v % 5], payload))
        batches.append(batch)
    return batches


async def pipelined_appends(
    writer: GroupCommitWriter, batches: list[list[Envelope]], in_flight: int
) -> float:
    """Submit every batch with at most ``in_flight`` unacknowledged; seconds until all durable."""
    pending: deque[asyncio.Future[None]] = deque()
    start = time.perf_counter()
    for batch in batches:
        pending.append(writer.enqueue(batch))
        if len(pending) >= in_flight:
            await pending.popleft()
    for future in pending:
        await future
    return time.perf_counter() - start


async def writer_throughput(
    make_log: Callable[[], EventLog], batches: list[list[Envelope]], in_flight: int
) -> tuple[float, int]:
    """Events per second through the writer into a fresh log, and the number of commits."""
    async with make_log() as log, GroupCommitWriter(log) as writer:
        elapsed = await pipelined_appends(writer, batches, in_flight)
        events = sum(len(b) for b in batches)
        assert await log.last_version() == events
        return events / elapsed, writer.groups_committed


async def submit_latency(make_log: Callable[[], EventLog], samples: int) -> list[float]:
    """Milliseconds per lone one-event submit on an idle writer (the low-load case)."""
    latencies: list[float] = []
    async with make_log() as log, GroupCommitWriter(log) as writer:
        for batch in make_batches(1, samples, 1):
            start = time.perf_counter()
            await writer.submit(batch)
            latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def sqlite_baseline(path: Path, rows: list[EventRow], synchronous: Synchronous) -> float:
    """Rows per second for one bare executemany in one transaction, same table and pragmas."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {DEFAULT_CHECKPOINT_PAGES}")
    conn.execute(
        "CREATE TABLE events (version INTEGER PRIMARY KEY, timestamp INTEGER NOT NULL, "
        "type TEXT NOT NULL, payload BLOB NOT NULL, batch_last INTEGER NOT NULL, "
        "checksum INTEGER NOT NULL)"
    )
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


async def postgres_baseline(dsn: str, schema: str, rows: list[EventRow]) -> tuple[float, float]:
    """Rows per second for a bare executemany, and for a bare COPY, each in one transaction."""
    conn = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "on"})
    figures: list[float] = []
    try:
        for table in ("baseline_executemany", "baseline_copy"):
            await conn.execute(
                f'CREATE TABLE "{schema}".{table} (version BIGINT PRIMARY KEY, '
                "timestamp BIGINT NOT NULL, type TEXT NOT NULL, payload BYTEA NOT NULL, "
                "batch_last BIGINT NOT NULL, checksum BIGINT NOT NULL)"
            )
            start = time.perf_counter()
            async with conn.transaction():
                if table == "baseline_copy":
                    await conn.copy_records_to_table(table, schema_name=schema, records=rows)
                else:
                    await conn.executemany(
                        f'INSERT INTO "{schema}".{table} VALUES ($1, $2, $3, $4, $5, $6)', rows
                    )
            figures.append(len(rows) / (time.perf_counter() - start))
    finally:
        await conn.close()
    return figures[0], figures[1]


async def fill(log: EventLog, first: int, events: int) -> float:
    """Append ``events`` events in big batches; events per second."""
    start = time.perf_counter()
    for start_version in range(first, first + events, 50_000):
        count = min(50_000, first + events - start_version)
        (batch,) = make_batches(start_version, count, count)
        await log.append(batch)
    return events / (time.perf_counter() - start)


async def replay(log: EventLog) -> tuple[int, float]:
    start = time.perf_counter()
    count = 0
    async for chunk in log.read_batches(1):
        count += len(chunk)
    return count, count / (time.perf_counter() - start)


async def restart(make_log: Callable[[], EventLog]) -> tuple[float, int, int]:
    """Seconds to open the log, load the newest snapshot and read the events after it."""
    start = time.perf_counter()
    async with make_log() as log:
        snapshot = await log.load_latest_snapshot()
        after = snapshot.version + 1 if snapshot else 1
        replayed = 0
        async for chunk in log.read_batches(after):
            replayed += len(chunk)
        elapsed = time.perf_counter() - start
    return elapsed, (snapshot.version if snapshot else 0), replayed


async def best_of(runs: int, measure: Callable[[], Awaitable[float]]) -> float:
    return max([await measure() for _ in range(runs)])


async def run(args: argparse.Namespace) -> dict[str, object]:
    batches = make_batches(1, args.events, args.batch_size)
    rows = [row for batch in batches for row in to_rows(batch)]
    workdir = Path(tempfile.mkdtemp(prefix="openperps-bench-", dir=args.dir))
    runs = iter(range(1_000_000))
    schema = f"bench_store_{os.getpid()}"

    def fresh_sqlite(synchronous: Synchronous = "FULL") -> Callable[[], EventLog]:
        path = workdir / f"events-{next(runs)}.sqlite3"
        return lambda: SqliteEventLog(path, synchronous=synchronous)

    def fresh_postgres() -> Callable[[], EventLog]:
        name = f"{schema}_{next(runs)}"
        return lambda: PostgresEventLog(args.dsn, schema=name)

    fresh = fresh_postgres if args.backend == "postgres" else fresh_sqlite
    print(
        f"workload: {args.events:,} events in batches of {args.batch_size:,}, "
        f"{PAYLOAD_BYTES}-byte payloads, {args.in_flight} batches in flight, "
        f"backend {args.backend}"
    )

    try:
        # Durable appends through the writer, and the bare baseline, alternating, best of N.
        writer_figures: list[float] = []
        baseline_figures: list[float] = []
        groups = 0
        copy_per_s = 0.0
        for _ in range(args.repeat):
            per_s, groups = await writer_throughput(fresh(), batches, args.in_flight)
            writer_figures.append(per_s)
            if args.backend == "postgres":
                base_schema = f"{schema}_{next(runs)}"
                async with PostgresEventLog(args.dsn, schema=base_schema):
                    pass  # creates the schema
                executemany_per_s, copy_per_s = await postgres_baseline(args.dsn, base_schema, rows)
                baseline_figures.append(executemany_per_s)
            else:
                path = workdir / f"baseline-{next(runs)}.sqlite3"
                baseline_figures.append(
                    await asyncio.to_thread(sqlite_baseline, path, rows, "FULL")
                )
        events_per_s, baseline_per_s = max(writer_figures), max(baseline_figures)
        print(
            f"writer:   {events_per_s:,.0f} events/s durable "
            f"({groups} commits of ~{args.events // max(groups, 1):,} events; "
            f"runs: {', '.join(f'{f:,.0f}' for f in writer_figures)})"
        )
        print(
            f"baseline: {baseline_per_s:,.0f} rows/s, bare executemany in one transaction "
            f"(runs: {', '.join(f'{f:,.0f}' for f in baseline_figures)})"
        )
        if args.backend == "postgres":
            print(f"          {copy_per_s:,.0f} rows/s, bare COPY in one transaction (reference)")
        else:
            normal, _ = await writer_throughput(fresh_sqlite("NORMAL"), batches, args.in_flight)
            print(
                f"          {normal:,.0f} events/s through the writer with synchronous=NORMAL "
                "(not power-loss safe; for comparison)"
            )
        print(f"ratio:    {events_per_s / baseline_per_s:.2f}")

        latencies = await submit_latency(fresh(), args.latency_samples)
        print(
            f"latency:  lone 1-event submit on an idle writer: median "
            f"{percentile(latencies, 0.5):.2f} ms, p99 "
            f"{percentile(latencies, 0.99):.2f} ms (one commit + fsync each)"
        )

        # A log of 1 000 000 events with a snapshot near the end.
        make_big = fresh()
        async with make_big() as log:
            fill_per_s = await fill(log, 1, args.restart_events)
            snapshot_at = args.restart_events - args.tail_after_snapshot
            await log.save_snapshot(snapshot_at, "0" * 64, os.urandom(args.snapshot_bytes))
            print(
                f"fill:     {args.restart_events:,} events at {fill_per_s:,.0f} events/s "
                f"(50 000-event appends); snapshot of {args.snapshot_bytes:,} bytes "
                f"at {snapshot_at:,}"
            )
            replayed, replay_per_s = await replay(log)
            assert replayed == args.restart_events
        print(f"replay:   {replayed:,} events at {replay_per_s:,.0f} events/s (checksums verified)")
        restart_s, snap_version, after = await restart(make_big)
        print(
            f"restart:  {restart_s:.3f} s to open {args.restart_events:,} events, load the "
            f"snapshot at {snap_version:,} and read the {after:,} events after it"
        )
    finally:
        if args.backend == "postgres":
            conn = await asyncpg.connect(args.dsn)
            try:
                for (name,) in await conn.fetch(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"{schema}_%"
                ):
                    await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
            finally:
                await conn.close()
        for leftover in workdir.iterdir():
            leftover.unlink()
        workdir.rmdir()

    return {
        "bench": "store",
        "backend": args.backend,
        "events_per_s": round(events_per_s),
        "baseline_rows_per_s": round(baseline_per_s),
        "ratio": round(events_per_s / baseline_per_s, 3),
        "replay_events_per_s": round(replay_per_s),
        "restart_s_1m": round(restart_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--dsn", default=os.environ.get("OPENPERPS_PG", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--dir", default=None, help="where SQLite files go (default: $TMPDIR)")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--restart-events", type=int, default=1_000_000)
    parser.add_argument("--tail-after-snapshot", type=int, default=10_000)
    parser.add_argument("--snapshot-bytes", type=int, default=16 * 1024 * 1024)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
