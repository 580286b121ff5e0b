"""Read models agree with the engine they were built from, and rebuild idempotently."""

from __future__ import annotations

import random
from collections import Counter

import msgspec

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import SYSTEM_ACCOUNTS, Engine
from openperps.core.markets import default_markets
from openperps.indexer import ReadModels
from openperps.indexer.models import CANCELLED, FILLED, OPEN, PARTIALLY_FILLED

APT, BTC = 1338, 1339
PROFILES = [f"0x{i:064x}" for i in range(0x100, 0x106)]
KEEPER = f"0x{0x999:064x}"


def session(seed: int, steps: int = 1500) -> tuple[Engine, list[e.Event]]:
    """A seeded random trading session on two markets, with prices that move."""
    rng = random.Random(seed)
    engine = Engine([])
    log: list[e.Event] = []
    now = 0

    def run(command: c.Command) -> None:
        log.extend(engine.handle(command))

    for config in default_markets():
        run(c.ListMarket(timestamp=now, market=config))
    for who in [*PROFILES, KEEPER]:
        amount = rng.randint(50, 5000) * 10**6
        run(c.Mint(timestamp=now, profile=who, amount=amount + 100 * 10**6))
        run(c.Deposit(timestamp=now, profile=who, amount=amount))
    mids = {APT: 7_000, BTC: 900_000}
    for _ in range(steps):
        now += rng.randint(1, 20_000)
        market = rng.choice([APT, BTC])
        mid = mids[market]
        lot = engine.markets[market].config.min_size
        who = rng.choice(PROFILES)
        roll = rng.random()
        long = rng.random() < 0.5
        if roll < 0.45:
            price = mid + rng.randint(-40, 40) * (1 if market == APT else 10)
            run(
                c.PlaceLimitOrder(
                    timestamp=now,
                    profile=who,
                    market_id=market,
                    trade_side=long,
                    direction=rng.random() < 0.25,
                    size=lot * rng.randint(1, 30),
                    price=price,
                    leverage=rng.choice([2, 5, 10, 20]),
                    restriction=rng.choice([0, 0, 0, 1, 2, 3]),
                )
            )
        elif roll < 0.6:
            pos = engine.position(who, market, long)
            run(
                c.PlaceMarketOrder(
                    timestamp=now,
                    profile=who,
                    market_id=market,
                    trade_side=long,
                    direction=pos is not None and rng.random() < 0.6,
                    size=min(pos.size, lot * rng.randint(1, 10))
                    if pos
                    else lot * rng.randint(1, 10),
                    leverage=pos.leverage if pos else 10,
                )
            )
        elif roll < 0.8:
            mine = [o for o in engine.markets[market].book.orders.values() if o.profile == who]
            if mine:
                target = rng.choice(mine)
                run(
                    c.CancelOrder(
                        timestamp=now, profile=who, market_id=market, order_id=target.order_id
                    )
                )
        elif roll < 0.92:
            mids[market] = max(mid + rng.randint(-80, 80) * (1 if market == APT else 10), 1000)
            run(c.SetOraclePrice(timestamp=now, market_id=market, price=mids[market]))
            for profile, side in engine.liquidatable(market):
                run(
                    c.Liquidate(
                        timestamp=now,
                        profile=profile,
                        market_id=market,
                        trade_side=side,
                        liquidator=KEEPER,
                    )
                )
        elif roll < 0.96:
            run(c.SettleFunding(timestamp=now, market_id=market))
        else:
            run(c.Withdraw(timestamp=now, profile=who, amount=rng.randint(1, 100) * 10**6))
    return engine, log


def assert_models_match(engine: Engine, models: ReadModels) -> None:
    assert models.version == engine.version
    for market_id, market in engine.markets.items():
        bids, asks = models.book_of(market_id)
        assert bids == market.book.depth(True)
        assert asks == market.book.depth(False)
        for order in market.book.orders.values():
            order_row = models.orders[order.order_id]
            assert order_row.remaining == order.remaining
            assert order_row.status in (OPEN, PARTIALLY_FILLED)
            assert order.order_id in models.open_orders[order.profile]
        for (profile, side), pos in market.slots.items():
            row = models.positions.get((profile, market_id, side))
            if pos.size:
                assert row is not None
                assert (row.size, row.entry_value, row.margin) == (
                    pos.size,
                    pos.entry_value,
                    pos.margin,
                )
                assert row.available_size == pos.size - pos.pending_reduce
            else:
                assert row is None
    resting = {o for m in engine.markets.values() for o in m.book.orders}
    listed = {oid for ids in models.open_orders.values() for oid in ids}
    assert listed == resting
    for profile, account in engine.accounts.items():
        if profile in SYSTEM_ACCOUNTS:
            continue
        account_row = models.accounts[profile]
        assert (account_row.free, account_row.reserved) == (account.free, account.reserved)
    for profile in engine.wallets:
        assert models.wallet_of(profile) == engine.wallet(profile)
    assert models.wallet_of("0x" + "ab" * 32) == 0


def test_read_models_agree_with_the_engine() -> None:
    for seed in (1, 2, 3):
        engine, log = session(seed)
        models = ReadModels()
        models.apply_all(log)
        assert_models_match(engine, models)
        kinds = Counter(type(ev).__name__ for ev in log)
        # the session exercises what the models project, not just deposits
        assert kinds["TradeExecuted"] > 50 and kinds["OrderCancelled"] > 50
        assert kinds["PositionChanged"] > 50 and kinds["FundingSettled"] > 0


def test_applying_the_log_twice_changes_nothing_and_batches_do_not_matter() -> None:
    _engine, log = session(5)
    once = ReadModels()
    once.apply_all(log)
    twice = ReadModels()
    for start in range(0, len(log), 97):
        twice.apply_all(log[start : start + 97])
    twice.apply_all(log)
    assert state(once) == state(twice)


def test_order_statuses_and_histories_are_newest_first() -> None:
    _engine, log = session(7, steps=600)
    models = ReadModels()
    models.apply_all(log)
    statuses = {row.status for row in models.orders.values()}
    assert statuses <= {OPEN, PARTIALLY_FILLED, FILLED, CANCELLED}
    assert FILLED in statuses and CANCELLED in statuses
    for address in PROFILES:
        history = models.order_history_of(address, limit=1000)
        versions = [row.timestamp for row in history]
        assert versions == sorted(versions, reverse=True)
        fills = models.fills_of(address, limit=1000)
        assert [f.version for f in fills] == sorted((f.version for f in fills), reverse=True)


def test_changes_name_the_subscriptions_to_push() -> None:
    engine, log = session(9, steps=50)
    models = ReadModels()
    models.apply_all(log)
    trade = next(
        i
        for i, ev in enumerate(
            engine.handle(c.Deposit(timestamp=engine.last_timestamp, profile=PROFILES[0], amount=1))
        )
        if i == 0
    )
    assert trade == 0
    applied = models.apply_all(
        engine.handle(c.Deposit(timestamp=engine.last_timestamp, profile=PROFILES[1], amount=5))
    )
    topics = {(ch.topic, ch.key) for ch in applied.changes}
    assert ("deposit_withdraw_history", PROFILES[1]) in topics


def state(models: ReadModels) -> bytes:
    return msgspec.json.encode(
        [
            models.version,
            sorted(models.orders.items()),
            sorted((k, list(v)) for k, v in models.order_history.items()),
            sorted((k, list(v)) for k, v in models.open_orders.items()),
            sorted((k, list(v)) for k, v in models.fills.items()),
            sorted(models.positions.items()),
            sorted((k, list(v)) for k, v in models.transfers.items()),
            sorted(models.accounts.items()),
            sorted(models.wallets.items()),
            sorted((m, sorted(b.items())) for m, b in models.books.items()),
            # the books as read, best first, as the feed and REST serve them
            sorted((m, models.book_of(m), models.book_of(m, 3)) for m in models.books),
        ]
    )


def test_a_saved_state_restores_and_carries_on_like_the_original() -> None:
    from openperps.indexer.models import ModelsState, load_state, save_state

    _engine, log = session(11)
    half = len(log) // 2
    original = ReadModels()
    original.apply_all(log[:half])
    blob = msgspec.json.encode(save_state(original))
    restored = load_state(msgspec.json.decode(blob, type=ModelsState))
    assert state(restored) == state(original)
    original.apply_all(log[half:])
    restored.apply_all(log[half:])
    assert state(restored) == state(original)
    address = PROFILES[0]
    assert restored.live_changes_since(address, 0) == original.live_changes_since(address, 0)


def test_wallets_follow_mints_deposits_and_withdrawals() -> None:
    engine = Engine(default_markets())
    models = ReadModels(default_markets())
    alice = PROFILES[0]

    def run(command: c.Command) -> None:
        models.apply_all(engine.handle(command))

    run(c.Mint(timestamp=1, profile=alice, amount=100))
    assert models.wallet_of(alice) == 100 and alice not in models.accounts
    run(c.Deposit(timestamp=2, profile=alice, amount=70))
    assert models.wallet_of(alice) == 30 and models.accounts[alice].free == 70
    run(c.Deposit(timestamp=3, profile=alice, amount=31))  # refused: nothing changes
    assert models.wallet_of(alice) == 30
    run(c.Withdraw(timestamp=4, profile=alice, amount=20))
    assert models.wallet_of(alice) == 50 == engine.wallet(alice)
    assert models.accounts[alice].free == 50
    # a log from before wallets: its deposits leave the wallet alone
    models.apply(e.Deposited(models.version + 1, 5, alice, 5, 55))
    assert models.wallet_of(alice) == 50 and models.accounts[alice].free == 55


def test_a_state_saved_before_wallets_still_loads() -> None:
    from openperps.indexer.models import ModelsState, load_state, save_state

    _engine, log = session(4, steps=50)
    models = ReadModels()
    models.apply_all(log)
    assert models.wallets  # the session leaves something in every wallet
    saved = msgspec.to_builtins(save_state(models))
    del saved["wallets"]
    loaded = load_state(msgspec.convert(saved, ModelsState))
    assert loaded.wallets == {} and loaded.accounts == models.accounts


def test_a_settlement_leaves_the_settled_rate_showing_until_the_next_index_price() -> None:
    """live_funding_rate does not drop to 0 at each settlement: the rate just settled shows
    until the next index price brings the new interval's prediction."""
    from tests.core.harness import ALICE, APT, BOB, CAROL, KEEPER, Exchange

    x = Exchange()
    for who in (ALICE, BOB, CAROL, KEEPER):
        x.deposit(who, "100000")
    x.limit(CAROL, "open long", "1", "6.800")
    x.limit(KEEPER, "open short", "1", "6.900")  # a mid under the index: a premium
    x.oracle("7.000")
    x.tick(3_600_000)
    settled = x.do(c.SettleFunding(timestamp=x.now, market_id=APT))
    models = ReadModels(m.config for m in x.engine.markets.values())
    models.apply_all(x.log)
    rate = next(ev.rate for ev in settled if isinstance(ev, e.FundingSettled))
    assert rate != 0 and models.markets[APT].funding_rate == rate
    assert models.markets[APT].funding_timestamp == x.now
    x.oracle("7.000")
    models.apply_all(x.log)
    assert models.markets[APT].funding_rate == x.engine.markets[APT].predicted_rate(x.now)
