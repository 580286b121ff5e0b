"""The one-process exchange: restart keeps everything, and reindex rebuilds the read models."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from openperps.cli.main import app
from openperps.core import commands as c
from openperps.runtime.app import Exchange, Settings
from openperps.runtime.startup import load_read_models
from openperps.store import open_log
from tests.indexer.test_models import state

ALICE = "0x" + "a1" * 32
BOB = "0x" + "b2" * 32
APT = 1338


async def trade(ex: Exchange, price: int) -> None:
    seq = ex.sequencer
    await seq.execute(c.Mint(timestamp=0, profile=ALICE, amount=10**9))
    await seq.execute(c.Deposit(timestamp=0, profile=ALICE, amount=10**9))
    await seq.execute(c.Mint(timestamp=0, profile=BOB, amount=10**9))
    await seq.execute(c.Deposit(timestamp=0, profile=BOB, amount=10**9))
    await seq.execute(
        c.PlaceLimitOrder(
            timestamp=0,
            profile=BOB,
            market_id=APT,
            trade_side=False,
            direction=False,
            size=500,
            price=price,
            leverage=10,
        )
    )
    await seq.execute(
        c.PlaceMarketOrder(
            timestamp=0,
            profile=ALICE,
            market_id=APT,
            trade_side=True,
            direction=False,
            size=200,
            leverage=10,
        )
    )


async def test_restart_keeps_engine_and_read_models(tmp_path: Path) -> None:
    db = str(tmp_path / "events.sqlite3")
    first = Exchange(Settings(db=db, ws_port=0))
    await first.start()
    await trade(first, 7000)
    assert await first.snapshotter.take() is not None
    await trade(first, 7100)
    expected_hash = first.sequencer.engine.state_hash()
    expected_models = state(first.models)
    await first.stop()

    second = Exchange(Settings(db=db, ws_port=0))
    await second.start()
    assert second.sequencer.engine.state_hash() == expected_hash
    assert state(second.models) == expected_models
    await second.stop()

    log = await open_log(db)
    rebuilt = await load_read_models(log, from_scratch=True)
    await log.close()
    assert state(rebuilt) == expected_models


async def test_the_live_retention_setting_holds_over_a_snapshot_and_a_restart(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "events.sqlite3")
    first = Exchange(Settings(db=db, ws_port=0))
    await first.start()
    await trade(first, 7000)
    await trade(first, 7100)
    assert await first.snapshotter.take() is not None  # kept with the default retention
    kept = len(first.models.live_log[ALICE])
    await first.stop()
    assert kept > 3
    second = Exchange(Settings(db=db, ws_port=0, live_retention=3))
    await second.start()
    try:
        models = second.models
        assert models.live_retention == 3
        rows, covered = models.live_changes_since(ALICE, 0)
        assert len(rows) == 3 and not covered, "older changes are gone: resume says so"
        await trade(second, 7200)
        assert len(models.live_log[ALICE]) == 3
    finally:
        await second.stop()


def test_reindex_rebuilds_and_stores_a_snapshot(tmp_path: Path) -> None:
    import asyncio

    db = str(tmp_path / "events.sqlite3")

    async def prepare() -> bytes:
        ex = Exchange(Settings(db=db, ws_port=0))
        await ex.start()
        await trade(ex, 7000)
        blob = state(ex.models)
        await ex.stop()
        return blob

    expected = asyncio.run(prepare())
    result = CliRunner().invoke(app, ["reindex", "--db", db])
    assert result.exit_code == 0, result.output
    assert "read models rebuilt at version" in result.output

    async def check() -> None:
        log = await open_log(db)
        snapshot = await log.load_latest_snapshot()
        models = await load_read_models(log)
        await log.close()
        assert snapshot is not None and models.version == snapshot.version
        assert state(models) == expected

    asyncio.run(check())
    missing = CliRunner().invoke(app, ["reindex", "--db", str(tmp_path / "none" / "x.db")])
    assert missing.exit_code == 1


async def test_an_exchange_whose_nats_is_down_trades_on_and_queues_for_it(
    tmp_path: Path,
) -> None:
    """Nothing listens on the bus's URL: every command still completes, read models and the
    feed follow, and the durable batches wait in the publisher's queue."""
    db = str(tmp_path / "events.sqlite3")
    ex = Exchange(Settings(db=db, ws_port=0, bus="nats://127.0.0.1:9"))
    await ex.start()
    try:
        await trade(ex, 7000)
        assert ex.publisher is not None
        assert ex.models.version == ex.sequencer.engine.version
        assert ex.publisher.last_version == ex.sequencer.engine.version
        assert ex.publisher.published_version == 0
        assert ex.publisher.queued > 0
    finally:
        await ex.stop()
