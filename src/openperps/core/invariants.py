"""The invariants of exchange-rules.md, checked against a live engine.

``violations(engine)`` returns a description of every broken invariant (empty when all hold).
Tests call it after every command; an operator can call it on a running exchange. It reads
the state only and is written naively on purpose: it shares no code with the fast paths it
checks.
"""

from __future__ import annotations

from collections.abc import Sequence

from openperps.core.engine import INSURANCE_FUND, Engine
from openperps.core.events import Event


def conservation_gap(engine: Engine) -> int:
    """minted - (every wallet + every balance + net cost basis of open positions).

    Zero when no unit was created or lost: money enters only by minting into a wallet, and
    everything minted is either still in a wallet or on the exchange. The net cost basis
    (short entry values minus long entry values) is what open positions owe each other: it
    equals their unrealised PnL at any common price, because longs and shorts of a market are
    equal in size.
    """
    minted = sum(w.minted for w in engine.wallets.values())
    held = sum(w.balance for w in engine.wallets.values())
    held += sum(a.free + a.reserved for a in engine.accounts.values())
    for market in engine.markets.values():
        for pos in market.slots.values():
            held += pos.margin
            held += -pos.entry_value if pos.trade_side else pos.entry_value
    return minted - held


def wallet_gaps(engine: Engine) -> dict[str, int]:
    """Per profile: wallet - (minted - deposited + withdrawn), where it is not zero."""
    gaps: dict[str, int] = {}
    for profile in engine.wallets.keys() | engine.accounts.keys():
        wallet = engine.wallets.get(profile)
        account = engine.accounts.get(profile)
        balance, minted = (wallet.balance, wallet.minted) if wallet is not None else (0, 0)
        moved = account.deposited - account.withdrawn if account is not None else 0
        gap = balance - (minted - moved)
        if gap:
            gaps[profile] = gap
    return gaps


def violations(engine: Engine) -> list[str]:
    found: list[str] = []
    gap = conservation_gap(engine)
    if gap:
        found.append(f"conservation: {gap} units unaccounted for")
    for profile, wallet_gap in sorted(wallet_gaps(engine).items()):
        found.append(f"{profile}: wallet off by {wallet_gap} from minted - deposited + withdrawn")
    for profile, wallet in engine.wallets.items():
        if wallet.balance < 0 or wallet.minted < 0:
            found.append(f"{profile}: negative wallet figures")
    for profile, account in engine.accounts.items():
        if account.reserved < 0:
            found.append(f"{profile}: negative reserved balance {account.reserved}")
        if account.free < 0 and profile != INSURANCE_FUND:
            found.append(f"{profile}: negative free balance {account.free}")
    for market_id, market in engine.markets.items():
        book = market.book
        if book.is_crossed():
            found.append(f"market {market_id}: book crossed")
        long_size = sum(p.size for (_, side), p in market.slots.items() if side)
        short_size = sum(p.size for (_, side), p in market.slots.items() if not side)
        if long_size != short_size:
            found.append(f"market {market_id}: long size {long_size} != short size {short_size}")
        reserved_by_profile: dict[str, int] = {}
        pending: dict[tuple[str, bool, bool], int] = {}
        for is_buy, levels in ((True, book.bids), (False, book.asks)):
            keys = sorted(levels)
            stored = book.bid_keys if is_buy else sorted(-k for k in book.ask_keys)
            if keys != stored:
                found.append(f"market {market_id}: price index out of step with levels")
            for price, level in levels.items():
                if not level:
                    found.append(f"market {market_id}: empty level {price}")
                ids = list(level)
                if ids != sorted(ids):
                    found.append(f"market {market_id}: level {price} not in time priority")
                for order in level.values():
                    if order.is_buy != is_buy or order.price != price:
                        found.append(f"order {order.order_id}: filed on the wrong level")
                    if not 0 < order.remaining <= order.size:
                        found.append(f"order {order.order_id}: remaining {order.remaining}")
                    if book.orders.get(order.order_id) is not order:
                        found.append(f"order {order.order_id}: missing from the id index")
                    reserved_by_profile[order.profile] = (
                        reserved_by_profile.get(order.profile, 0) + order.reserved
                    )
                    key = (order.profile, order.trade_side, order.direction)
                    pending[key] = pending.get(key, 0) + order.remaining
                    if (order.profile, order.trade_side) not in market.slots:
                        found.append(f"order {order.order_id}: no position slot")
        if sum(len(level) for level in book.bids.values()) + sum(
            len(level) for level in book.asks.values()
        ) != len(book.orders):
            found.append(f"market {market_id}: id index holds orders not on the book")
        for (profile, side), pos in market.slots.items():
            if pos.size < 0 or pos.margin < 0 or pos.entry_value < 0:
                found.append(f"{profile} {market_id}: negative position figures")
            if pos.pending_open != pending.get((profile, side, False), 0):
                found.append(f"{profile} {market_id}: pending open out of step")
            if pos.pending_reduce != pending.get((profile, side, True), 0):
                found.append(f"{profile} {market_id}: pending reduce out of step")
            if pos.pending_reduce > pos.size:
                found.append(f"{profile} {market_id}: resting reduces exceed the position")
            if pos.size == 0 and (pos.margin or pos.entry_value):
                found.append(f"{profile} {market_id}: closed position still holds value")
            if pos.size == 0 and not pos.pending_open and not pos.pending_reduce:
                found.append(f"{profile} {market_id}: idle slot kept")
        for profile in reserved_by_profile:
            if profile not in engine.accounts:
                found.append(f"{profile}: orders rest without an account")
    # every account's reserved balance is exactly what its resting orders hold
    total_reserved: dict[str, int] = {}
    for market in engine.markets.values():
        for order in market.book.orders.values():
            total_reserved[order.profile] = total_reserved.get(order.profile, 0) + order.reserved
    for profile, account in engine.accounts.items():
        if account.reserved != total_reserved.get(profile, 0):
            found.append(f"{profile}: reserved {account.reserved} != orders' reserve")
    return found


def version_gaps(events: Sequence[Event], start: int = 0) -> list[str]:
    """Versions must run start+1, start+2, ... with no gap or repeat."""
    found = []
    expected = start + 1
    for event in events:
        if event.version != expected:
            found.append(f"version {event.version} where {expected} was due")
        expected = event.version + 1
    return found
