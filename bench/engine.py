"""Engine throughput: the full engine against a bare price-time book, same workload.

Workload (one market, several accounts, margin checks on): about 60 % limit placements
around the mid (most rest, some cross), 30 % cancels of resting orders, 10 % market orders
that cross. Accounts open and close positions on both sides, so reducing orders, fees and
margin releases all run. The baseline replays the same order flow through ``core.book.Book``
with a minimal matcher: no accounts, margin, fees, events or validation.

Prints figures, then as its last line one JSON object:
{"bench": "engine", "commands_per_s": N, "baseline_ops_per_s": N, "ratio": R}
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections import Counter
from dataclasses import dataclass

from openperps.core import commands as c
from openperps.core.book import Book, Order
from openperps.core.engine import Engine
from openperps.core.events import OrderAccepted
from openperps.core.invariants import violations
from openperps.core.markets import default_markets

MARKET = 1338  # APT-USD testnet: price in 0.001, size in 0.01
MID = 7_000


def profile_of(i: int) -> str:
    return f"0x{i + 100:064x}"


@dataclass(frozen=True)
class Op:
    kind: str  # "limit", "cancel", "market"
    profile: str
    is_buy: bool
    price: int
    size: int
    ref: int  # for a cancel: the index of the placement it cancels


def workload(n: int, accounts: int, seed: int) -> list[Op]:
    rng = random.Random(seed)
    profiles = [profile_of(i) for i in range(accounts)]
    ops: list[Op] = []
    live: list[int] = []
    for _ in range(n):
        roll = rng.random()
        profile = rng.choice(profiles)
        is_buy = rng.random() < 0.5
        if roll < 0.6 or not live:
            # mostly passive, a few ticks from the mid; one in eight crosses
            offset = rng.randint(1, 40)
            if rng.random() < 0.125:
                offset = -rng.randint(0, 5)
            price = MID - offset if is_buy else MID + offset
            ops.append(Op("limit", profile, is_buy, price, rng.randint(1, 20) * 10, 0))
            live.append(len(ops) - 1)
        elif roll < 0.9:
            ref = live.pop(rng.randrange(len(live)))
            ops.append(Op("cancel", ops[ref].profile, ops[ref].is_buy, 0, 0, ref))
        else:
            ops.append(Op("market", profile, is_buy, 0, rng.randint(1, 10) * 10, 0))
    return ops


def fresh_engine(accounts: int) -> Engine:
    engine = Engine(default_markets())
    for i in range(accounts):
        engine.handle(c.Mint(timestamp=0, profile=profile_of(i), amount=10**15))
        engine.handle(c.Deposit(timestamp=0, profile=profile_of(i), amount=10**15))
    engine.handle(c.SetOraclePrice(timestamp=0, market_id=MARKET, price=MID))
    return engine


def to_commands(ops: list[Op], accounts: int) -> list[c.Command]:
    """Turn the order flow into engine commands.

    Buys open longs and sells open shorts; hedge mode keeps both, margin checks apply. A
    cancel needs the id the engine gave its order, so the flow is run once untimed to learn
    them (the engine is deterministic: the timed run assigns the same ids).
    """
    engine = fresh_engine(accounts)
    commands: list[c.Command] = []
    ids: dict[int, int] = {}
    ts = 1_000
    for i, op in enumerate(ops):
        ts += 1
        command: c.Command
        if op.kind == "cancel":
            command = c.CancelOrder(
                timestamp=ts, profile=op.profile, market_id=MARKET, order_id=ids.get(op.ref, 0)
            )
        elif op.kind == "limit":
            command = c.PlaceLimitOrder(
                timestamp=ts,
                profile=op.profile,
                market_id=MARKET,
                trade_side=op.is_buy,
                direction=False,
                size=op.size,
                price=op.price,
                leverage=10,
            )
        else:
            command = c.PlaceMarketOrder(
                timestamp=ts,
                profile=op.profile,
                market_id=MARKET,
                trade_side=op.is_buy,
                direction=False,
                size=op.size,
                leverage=10,
            )
        for event in engine.handle(command):
            if isinstance(event, OrderAccepted):
                ids[i] = event.order_id
        commands.append(command)
    return commands


def run_engine(commands: list[c.Command], accounts: int) -> tuple[float, Counter[str], Engine]:
    engine = fresh_engine(accounts)
    handle = engine.handle
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    outputs = [handle(command) for command in commands]
    elapsed = time.perf_counter() - start
    gc.enable()
    kinds = Counter(type(event).__name__ for events in outputs for event in events)
    return elapsed, kinds, engine


def run_baseline(ops: list[Op], *, report: bool = True) -> float:
    """The same flow through a bare price-time book: rest, cancel, match; no accounts,
    margin, fees, positions or validation. With ``report`` it hands back what any book must
    tell its caller (accepted, each fill, cancelled) as plain tuples; without, it only
    moves orders."""
    book = Book()
    orders: dict[int, Order] = {}
    next_id = 0
    out: list[tuple[object, ...]] = []
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    for i, op in enumerate(ops):
        results: list[tuple[object, ...]] = []
        if op.kind == "cancel":
            order = orders.pop(op.ref, None)
            if order is not None and order.order_id in book.orders:
                book.remove(order)
                if report:
                    results.append(("cancelled", order.order_id, order.remaining))
            if report:
                out.append(tuple(results))
            continue
        next_id += 1
        limit = op.price if op.kind == "limit" else None
        taker = Order(
            next_id, op.profile, MARKET, op.is_buy, False, 1, limit or 0, op.size, 1, 0, 0
        )
        if report:
            results.append(("accepted", next_id))
        keys = book.ask_keys if op.is_buy else book.bid_keys
        levels = book.asks if op.is_buy else book.bids
        while taker.remaining and keys:
            price = -keys[-1] if op.is_buy else keys[-1]
            if limit is not None and (price > limit if op.is_buy else price < limit):
                break
            maker = next(iter(levels[price].values()))
            qty = min(taker.remaining, maker.remaining)
            maker.remaining -= qty
            taker.remaining -= qty
            if report:
                results.append(("fill", maker.order_id, taker.order_id, price, qty))
            if not maker.remaining:
                book.remove(maker)
        if taker.remaining and limit is not None:
            book.add(taker)
            orders[i] = taker
        elif taker.remaining and report:
            results.append(("cancelled", taker.order_id, taker.remaining))
        if report:
            out.append(tuple(results))
    elapsed = time.perf_counter() - start
    gc.enable()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=5, help="best of N runs")
    args = parser.parse_args()

    ops = workload(args.commands, args.accounts, args.seed)
    commands = to_commands(ops, args.accounts)
    engine_best = baseline_best = silent_best = float("inf")
    kinds: Counter[str] = Counter()
    engine: Engine | None = None
    for _ in range(args.rounds):
        elapsed, kinds, engine = run_engine(commands, args.accounts)
        engine_best = min(engine_best, elapsed)
        baseline_best = min(baseline_best, run_baseline(ops))
        silent_best = min(silent_best, run_baseline(ops, report=False))
    assert engine is not None
    broken = violations(engine)
    if broken:
        raise SystemExit(f"invariants broken after the run: {broken[:5]}")
    mix = {k: sum(1 for op in ops if op.kind == k) for k in ("limit", "cancel", "market")}
    engine_events = sum(kinds.values())
    commands_per_s = args.commands / engine_best
    baseline_per_s = args.commands / baseline_best
    print(f"workload: {args.commands} commands, {args.accounts} accounts, mix {mix}")
    print(f"events:   {dict(kinds.most_common())}")
    print(
        f"engine:   {engine_best:.3f} s  {commands_per_s:,.0f} commands/s  "
        f"{engine_events / engine_best:,.0f} events/s ({engine_events} events)"
    )
    print(f"baseline: {baseline_best:.3f} s  {baseline_per_s:,.0f} ops/s (bare book, reporting)")
    silent_per_s = args.commands / silent_best
    print(
        f"silent:   {silent_best:.3f} s  {silent_per_s:,.0f} ops/s (bare book reporting "
        f"nothing; engine ratio {commands_per_s / silent_per_s:.3f})"
    )
    print(f"resting orders at the end: {len(engine.markets[MARKET].book.orders)}")
    print(
        json.dumps(
            {
                "bench": "engine",
                "commands_per_s": round(commands_per_s),
                "baseline_ops_per_s": round(baseline_per_s),
                "ratio": round(commands_per_s / baseline_per_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
