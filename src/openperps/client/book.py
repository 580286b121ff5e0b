"""A local copy of one market's book, kept from the feed's delta mode.

The first push is a snapshot at version V; each delta says the version it brings the book to
and the previous one. A delta whose ``prev_version`` is newer than the book is a gap: the
book says so (``apply`` returns False, once) and the feed takes a fresh snapshot.

A book that no longer follows the server (after a gap, or while the feed reconnects) is
stale: it holds no levels and its ``version`` is None until the next snapshot, so that
``best_bid()`` never answers from levels that may be gone. Deltas that arrive meanwhile are
ignored; the snapshot replaces them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class LocalBook:
    def __init__(self, market_id: str, depth: int | None = None) -> None:
        self.market_id = market_id
        self.depth = depth  # levels a side the feed keeps (None: not said)
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.version: int | None = None
        self.gaps = 0

    def apply(self, push: dict[str, Any]) -> bool:
        """Fold in one orderbook push; False when a gap means a new snapshot is needed (once
        per gap: the deltas that follow are ignored until the snapshot)."""
        version = push.get("transaction_version")
        if not isinstance(version, int):
            return True
        if push.get("mode", "snapshot") == "snapshot":
            self.bids.clear()
            self.asks.clear()
            self._levels(push.get("data", []))
            self.version = version
            return True
        if self.version is None:
            return True  # stale: waiting for a snapshot, which replaces this delta
        previous = push.get("prev_version")
        if not isinstance(previous, int) or previous > self.version:
            self.gaps += 1
            self.mark_stale()
            return False
        if version <= self.version:
            return True  # already part of the snapshot
        self._levels(push.get("data", []))
        self.version = version
        return True

    def mark_stale(self) -> None:
        """Forget the levels: the book does not follow the server until the next snapshot."""
        self.bids.clear()
        self.asks.clear()
        self.version = None

    def _levels(self, levels: list[dict[str, Any]]) -> None:
        for level in levels:
            side = self.asks if level["is_ask"] else self.bids
            price = Decimal(str(level["price"]))
            size = Decimal(level["size"])
            if size:
                side[price] = size
            else:
                side.pop(price, None)

    def best_bid(self) -> tuple[Decimal, Decimal] | None:
        return max(self.bids.items()) if self.bids else None

    def best_ask(self) -> tuple[Decimal, Decimal] | None:
        return min(self.asks.items()) if self.asks else None

    def levels(
        self, depth: int = 10
    ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        bids = sorted(self.bids.items(), reverse=True)[:depth]
        asks = sorted(self.asks.items())[:depth]
        return bids, asks

    def __repr__(self) -> str:
        bid, ask = self.best_bid(), self.best_ask()
        top = f"{bid[1]} @ {bid[0]}" if bid else "none"
        offer = f"{ask[1]} @ {ask[0]}" if ask else "none"
        return (
            f"LocalBook(market {self.market_id}, version {self.version}, "
            f"{len(self.bids)} bids, best {top}; {len(self.asks)} asks, best {offer})"
        )
