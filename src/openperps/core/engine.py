"""The exchange engine: ``Engine.handle(command) -> list[Event]``, a pure state machine.

It implements ``shared/spec/exchange-rules.md``; the rules it had to choose where the file is
silent are written down in ``docs/exchange-rules.md``. Time and ids come in with the command
or from the engine's own counters; there is no clock, randomness or I/O, so one command log
always yields one event log, byte for byte, and one ``state_hash()``.

Every event takes the next ``version`` (the exchange-wide ``transaction_version``). A command
the rules refuse yields a single ``Rejected`` event with its code and changes nothing else. A
command they accept yields ``CommandExecuted`` (the command itself, so the log can be replayed
by re-executing it, see ``core.replay``) followed by its effects.
Position and balance changes are coalesced per command: after the command's own events come
one ``PositionChanged`` per position it touched and one ``BalanceChanged`` per account whose
free or reserved balance moved (except the fee account, whose balance is the running sum of
the fees in ``TradeExecuted``).

Money enters only by ``Mint``, into a wallet: the USDT a profile's owner holds outside the
exchange (the testnet faucet, or an operator recording a transfer in). ``Deposit`` moves it
from the wallet to the profile's free balance and ``Withdraw`` back. On the exchange, money
flows between accounts only; system accounts hold what belongs to nobody: ``FEES_ACCOUNT``
(trading fees), ``INSURANCE_FUND`` (liquidation proceeds; covers shortfalls, may hold
positions it took over) and ``HOUSE_ACCOUNT`` (rounding remainders). So everything minted
always equals the wallets plus every free, reserved and margin balance plus the net cost
basis of open positions, to the unit, and each wallet holds what was minted into it less
what it deposited plus what it withdrew (see ``core.invariants``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import msgspec

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.book import Book, Order
from openperps.core.errors import MESSAGES, ErrorCode, InvalidInput
from openperps.core.margin import bankruptcy_price, is_liquidatable
from openperps.core.markets import MarketConfig
from openperps.core.numbers import (
    BPS_ONE,
    MAX_INPUT,
    RATE_ONE,
    ceil_div,
    floor_div,
    is_valid_int,
)
from openperps.core.snapshot import (
    AccountSnap,
    DelegationSnap,
    EngineSnapshot,
    MarketSnap,
    OrderSnap,
    PositionSnap,
    WalletSnap,
    decode_snapshot,
    encode_snapshot,
)

INSURANCE_FUND: Final = "0x" + "0" * 63 + "1"
FEES_ACCOUNT: Final = "0x" + "0" * 63 + "2"
HOUSE_ACCOUNT: Final = "0x" + "0" * 63 + "3"
SYSTEM_ACCOUNTS: Final = frozenset({INSURANCE_FUND, FEES_ACCOUNT, HOUSE_ACCOUNT})

MAX_BATCH: Final = 20
PREMIUM_CLAMP: Final = 5 * RATE_ONE // BPS_ONE  # the +-0.05 % bound on (interest - premium)
LIQUIDATION_SPLIT: Final = (50, 30, 20)  # user, liquidator, insurance fund (percent)
_HEX: Final = frozenset("0123456789abcdef")
# hot names bound once: the compiled engine reads these as C statics, not module attributes
_CommandExecuted: Final = e.CommandExecuted
_OrderAccepted: Final = e.OrderAccepted
_PositionChanged: Final = e.PositionChanged
_BalanceChanged: Final = e.BalanceChanged
_TradeExecuted: Final = e.TradeExecuted
_OrderCancelled: Final = e.OrderCancelled
_FIELD_KINDS: Final = c.FIELD_KINDS

# the code a wrongly typed field is refused with (any other field: INVALID_NUMBER)
_TYPE_CODES: Final = {
    "trade_side": ErrorCode.INVALID_FLAG,
    "direction": ErrorCode.INVALID_FLAG,
    "paused": ErrorCode.INVALID_FLAG,
    "restriction": ErrorCode.INVALID_RESTRICTION,
    "profile": ErrorCode.INVALID_ADDRESS,
    "liquidator": ErrorCode.INVALID_ADDRESS,
    "delegate": ErrorCode.NOT_AUTHORISED,
    "delegate_public_key": ErrorCode.INVALID_DELEGATION,
    "market_id": ErrorCode.MARKET_NOT_FOUND,
    "order_id": ErrorCode.ORDER_NOT_FOUND,
}


def _type_code(path: str) -> ErrorCode:
    """The code for a wrongly typed field at ``path`` (``size``, ``orders[2].price``, ...)."""
    if path == "market" or path.startswith("market."):
        return ErrorCode.INVALID_MARKET_CONFIG  # a listed market's configuration
    leaf = path.rsplit(".", 1)[-1]
    if leaf.endswith("]") and leaf.startswith("orders["):
        return ErrorCode.UNKNOWN_COMMAND  # a batch item that is not an order
    return _TYPE_CODES.get(leaf.split("[", 1)[0], ErrorCode.INVALID_NUMBER)


# field kinds (commands.FIELD_KINDS) as literals the compiler can inline
_INT: Final = 0
_OPT_INT: Final = 1
_BOOL: Final = 2
_STR: Final = 3
_OPT_STR: Final = 4
_RESTRICTION: Final = 5
_INT_LIST: Final = 6
_STRUCT: Final = 7
if (_INT, _OPT_INT, _BOOL, _STR, _OPT_STR, _RESTRICTION, _INT_LIST, _STRUCT) != (
    c.INT,
    c.OPT_INT,
    c.BOOL,
    c.STR,
    c.OPT_STR,
    c.RESTRICTION,
    c.INT_LIST,
    c.STRUCT,
):
    raise ImportError("core.engine and core.commands disagree on field kinds")


def _encodable(text: str) -> bool:
    """A string the log can hold: UTF-8 encodable (a lone surrogate is not)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _mistyped(value: object, kinds: tuple[tuple[str, int, tuple[type, ...]], ...]) -> str | None:
    """The path of the first field of a command (or of a struct in it) that does not hold
    its declared type exactly (``commands.FIELD_KINDS``), or None."""
    fields = msgspec.structs.astuple(value)  # type: ignore[arg-type]
    for i, (name, kind, classes) in enumerate(kinds):
        field = fields[i]
        t = type(field)
        if kind == _INT:
            ok = t is int
        elif kind == _STR:
            ok = t is str and _encodable(field)
        elif kind == _BOOL:
            ok = t is bool
        elif kind == _OPT_INT:
            ok = field is None or t is int
        elif kind == _OPT_STR:
            ok = field is None or (t is str and _encodable(field))
        elif kind == _RESTRICTION:
            ok = t is int or t is c.Restriction
        elif kind == _INT_LIST:
            ok = t is list and all(type(item) is int for item in field)
        elif kind == _STRUCT:
            if t not in classes:
                return name
            inner = _mistyped(field, _FIELD_KINDS[t])
            if inner is not None:
                return f"{name}.{inner}"
            ok = True
        else:  # STRUCT_LIST
            if t is not list:
                return name
            for i, item in enumerate(field):
                if type(item) not in classes:
                    return f"{name}[{i}]"
                inner = _mistyped(item, _FIELD_KINDS[type(item)])
                if inner is not None:
                    return f"{name}[{i}].{inner}"
            ok = True
        if not ok:
            return name
    return None


# order_type codes (exchange-rules.md): odd = long side, even = short side
OPEN, INCREASE, DECREASE, CLOSE, TPSL, LIQUIDATION = 1, 3, 5, 7, 9, 11
FOK: Final = int(c.Restriction.FILL_OR_KILL)
IOC: Final = int(c.Restriction.IMMEDIATE_OR_CANCEL)
POST_ONLY: Final = int(c.Restriction.POST_ONLY)


def order_type_code(base: int, trade_side: bool) -> int:
    return base if trade_side else base + 1


def is_address(value: object) -> bool:
    """A normalised profile address: ``0x`` and 64 lower-case hex digits."""
    return (
        type(value) is str
        and len(value) == 66
        and value.startswith("0x")
        and _HEX.issuperset(value[2:])
    )


def normalise_public_key(value: object) -> str | None:
    """An Ed25519 public key as ``0x`` + 64 lower-case hex digits, or None if malformed."""
    if type(value) is not str:
        return None
    text = value.lower()
    text = text.removeprefix("0x")
    if len(text) != 64 or not _HEX.issuperset(text):
        return None
    return "0x" + text


class Account:
    __slots__ = ("deposited", "free", "reserved", "withdrawn")

    def __init__(self, free: int = 0, reserved: int = 0, deposited: int = 0, withdrawn: int = 0):
        self.free = free
        self.reserved = reserved
        self.deposited = deposited
        self.withdrawn = withdrawn


class Wallet:
    """USDT a profile's owner holds outside the exchange; ``minted`` is all ever credited."""

    __slots__ = ("balance", "minted")

    def __init__(self, balance: int = 0, minted: int = 0) -> None:
        self.balance = balance
        self.minted = minted


class Position:
    """One isolated position, keyed by (profile, market, side); hedge mode holds two.

    A slot lives while the position is open or orders rest on it: ``pending_open`` and
    ``pending_reduce`` are the remaining sizes of its resting opening and reducing orders.
    """

    __slots__ = (
        "entry_value",
        "leverage",
        "margin",
        "market_id",
        "pending_open",
        "pending_reduce",
        "profile",
        "size",
        "stop_loss",
        "take_profit",
        "trade_id",
        "trade_side",
    )

    def __init__(
        self, profile: str, market_id: int, trade_side: bool, trade_id: int, leverage: int
    ) -> None:
        self.profile = profile
        self.market_id = market_id
        self.trade_side = trade_side
        self.trade_id = trade_id
        self.leverage = leverage
        self.size = 0
        self.entry_value = 0
        self.margin = 0
        self.take_profit: int | None = None
        self.stop_loss: int | None = None
        self.pending_open = 0
        self.pending_reduce = 0


class MarketState:
    __slots__ = (
        "book",
        "config",
        "funding_rate",
        "index_price",
        "interval_start",
        "last_funding_ts",
        "last_premium",
        "last_sample_ts",
        "last_trade_price",
        "mul",
        "paused",
        "position_counter",
        "premium_acc",
        "slots",
    )

    def __init__(self, config: MarketConfig, timestamp: int) -> None:
        self.config = config
        self.mul = config.notional_multiplier
        self.book = Book()
        self.paused = False
        self.index_price: int | None = None
        self.last_trade_price: int | None = None
        self.premium_acc = 0  # sum of premium x milliseconds over the running interval
        self.last_premium = 0
        self.last_sample_ts = timestamp
        self.interval_start = timestamp
        self.last_funding_ts = 0
        self.funding_rate = 0  # the last settled rate
        self.position_counter = 0
        self.slots: dict[tuple[str, bool], Position] = {}

    def mark_price(self) -> int | None:
        """median(index, best bid, best ask) when both sides exist, else the index."""
        index = self.index_price
        if index is None:
            return None
        bid, ask = self.book.best_bid(), self.book.best_ask()
        if bid is None or ask is None:
            return index
        return sorted((index, bid, ask))[1]

    def premium(self) -> int:
        """(mid - index) / index in rate units; 0 without an index or a two-sided book."""
        index = self.index_price
        bid, ask = self.book.best_bid(), self.book.best_ask()
        if index is None or bid is None or ask is None:
            return 0
        return floor_div((bid + ask - 2 * index) * RATE_ONE, 2 * index)

    def predicted_rate(self, now: int) -> int:
        """The funding rate the running interval would settle at ``now``."""
        acc = self.premium_acc + self.last_premium * (now - self.last_sample_ts)
        elapsed = now - self.interval_start
        twap = floor_div(acc, elapsed) if elapsed > 0 else self.last_premium
        return funding_rate(twap, self.config)


def funding_rate(premium_twap: int, config: MarketConfig) -> int:
    """F = clamp(P + clamp(I - P, -0.05 %, 0.05 %), -cap, cap)."""
    interest = config.interest_per_interval
    adjust = min(max(interest - premium_twap, -PREMIUM_CLAMP), PREMIUM_CLAMP)
    cap = config.funding_cap
    return min(max(premium_twap + adjust, -cap), cap)


class _Reject(Exception):
    """Internal control flow: abandon a command before it changed anything."""

    def __init__(self, code: ErrorCode, detail: str | None = None) -> None:
        self.code = code
        self.detail = detail or MESSAGES[code]


# ---------------------------------------------------------------------------------------------


class Engine:
    """The exchange: markets, books, accounts and positions, changed only by ``handle``."""

    def __init__(self, markets: list[MarketConfig], *, timestamp: int = 0) -> None:
        self.version = 0
        self.last_timestamp = timestamp
        self.order_counter = 0
        self.markets: dict[int, MarketState] = {}
        for config in markets:
            config.validate()
            if config.market_id in self.markets:
                raise InvalidInput(ErrorCode.INVALID_MARKET_CONFIG, "duplicate market ids")
            self.markets[config.market_id] = MarketState(config, timestamp)
        self.accounts: dict[str, Account] = {}
        self.wallets: dict[str, Wallet] = {}
        self.delegations: dict[str, tuple[str, int]] = {}
        self._out: list[e.Event] = []
        self._ts = timestamp
        self._dirty_positions: dict[int, Position] = {}
        self._dirty_accounts: dict[str, Account] = {}
        self._liquidation_pot = 0
        handlers: dict[type, Callable[[Any], None]] = {
            c.Mint: self._mint,
            c.Deposit: self._deposit,
            c.Withdraw: self._withdraw,
            c.PlaceLimitOrder: self._place_limit,
            c.PlaceMarketOrder: self._place_market,
            c.CancelOrder: self._cancel,
            c.PlaceMultipleOrders: self._place_multiple,
            c.CancelMultipleOrders: self._cancel_multiple,
            c.CancelAndPlaceMultipleOrders: self._cancel_and_place,
            c.UpdateTakeProfit: self._update_take_profit,
            c.UpdateStopLoss: self._update_stop_loss,
            c.AddMargin: self._add_margin,
            c.CollapsePosition: self._collapse,
            c.EnableDelegation: self._enable_delegation,
            c.DisableDelegation: self._disable_delegation,
            c.SetOraclePrice: self._set_oracle_price,
            c.SettleFunding: self._settle_funding,
            c.Liquidate: self._liquidate,
            c.ListMarket: self._list_market,
            c.PauseMarket: self._pause_market,
        }
        # each command's handler and the field types it is checked against before it runs
        self._handlers: dict[
            type, tuple[Callable[[Any], None], tuple[tuple[str, int, tuple[type, ...]], ...]]
        ] = {cls: (handler, _FIELD_KINDS[cls]) for cls, handler in handlers.items()}

    # -- entry point ----------------------------------------------------------------------------

    def handle(self, command: c.Command) -> list[e.Event]:
        """Apply one command; return the events it produced, in version order."""
        out: list[e.Event] = []
        self._out = out
        entry = self._handlers.get(type(command))
        start = self.version
        try:
            if entry is None:
                raise _Reject(ErrorCode.UNKNOWN_COMMAND)
            handler, kinds = entry
            # every field, nested orders and configurations included, holds its declared
            # type from here on: handlers do not check types again
            mistyped = _mistyped(command, kinds)
            if mistyped is not None:
                raise _Reject(_type_code(mistyped), f"{mistyped} has the wrong type")
            ts = command.timestamp
            if type(ts) is not int or not self.last_timestamp <= ts <= MAX_INPUT:
                if type(ts) is not int or not 0 <= ts <= MAX_INPUT:
                    raise _Reject(ErrorCode.INVALID_NUMBER, "timestamp must be a non-negative int")
                raise _Reject(ErrorCode.TIMESTAMP_REGRESSED)
            self.last_timestamp = self._ts = ts
            if isinstance(command, c.UserCommand) and (
                command.delegate is not None
                or command.profile not in self.accounts
                or command.profile in SYSTEM_ACCOUNTS
            ):
                self._authorise(command)
            # the command itself is journaled first: replay re-executes it (core.replay)
            self.version = start + 1
            journaled: Any = command  # one of c.AnyCommand: its handler exists (no re-check)
            out.append(_CommandExecuted(start + 1, ts, journaled))
            handler(command)
        except _Reject as rejection:
            # handlers refuse before they change anything; drop what was journaled
            self._undo(start)
            self._reject(type(command).__name__, command, rejection.code, rejection.detail)
        if self._dirty_positions or self._dirty_accounts:
            self._flush()
        return out

    def _undo(self, start: int) -> None:
        self._out.clear()
        self.version = start
        self._dirty_positions.clear()
        self._dirty_accounts.clear()

    @staticmethod
    def _check_owner(profile: object, system_refusal: str) -> None:
        """A well-formed address of a profile that is not a system account."""
        if not is_address(profile):
            raise _Reject(ErrorCode.INVALID_ADDRESS, "profile must be 0x followed by 64 hex digits")
        if profile in SYSTEM_ACCOUNTS:
            raise _Reject(ErrorCode.NOT_AUTHORISED, system_refusal)

    def _authorise(self, command: c.UserCommand) -> None:
        profile = command.profile
        self._check_owner(profile, "system accounts take no user commands")
        delegate = command.delegate
        if delegate is None:
            return
        if isinstance(command, (c.Withdraw, c.EnableDelegation, c.DisableDelegation)):
            raise _Reject(ErrorCode.NOT_AUTHORISED, "a delegate cannot withdraw or delegate")
        granted = self.delegations.get(profile)
        if granted is None or granted[0] != normalise_public_key(delegate):
            raise _Reject(ErrorCode.NOT_AUTHORISED, "key is not this profile's delegate")
        if granted[1] <= self._ts:
            raise _Reject(ErrorCode.NOT_AUTHORISED, "delegation has expired")

    def _next_version(self) -> int:
        self.version += 1
        return self.version

    def _reject(
        self, name: str, command: c.Command, code: ErrorCode, detail: str | None = None
    ) -> None:
        profile = getattr(command, "profile", None)
        market_id = getattr(command, "market_id", None)
        self._out.append(
            e.Rejected(
                self._next_version(),
                self._ts,
                name,
                # the refusal is logged: a profile that cannot be is left out
                profile if type(profile) is str and _encodable(profile) else None,
                market_id if is_valid_int(market_id) else None,
                int(code),
                detail or MESSAGES[code],
            )
        )

    def _flush(self) -> None:
        out = self._out
        ts = self._ts
        if self._dirty_positions:
            for pos in self._dirty_positions.values():
                out.append(
                    _PositionChanged(
                        self._next_version(),
                        ts,
                        pos.profile,
                        pos.market_id,
                        pos.trade_side,
                        pos.trade_id,
                        pos.size,
                        pos.entry_value,
                        pos.margin,
                        pos.leverage,
                        pos.take_profit,
                        pos.stop_loss,
                        pos.size - pos.pending_reduce,
                    )
                )
            self._dirty_positions.clear()
        if self._dirty_accounts:
            for profile, account in self._dirty_accounts.items():
                out.append(
                    _BalanceChanged(
                        self._next_version(), ts, profile, account.free, account.reserved
                    )
                )
            self._dirty_accounts.clear()

    # -- helpers ---------------------------------------------------------------------------------

    def _market(self, market_id: object) -> MarketState:
        market = self.markets.get(market_id) if type(market_id) is int else None
        if market is None:
            raise _Reject(ErrorCode.MARKET_NOT_FOUND)
        return market

    def _account(self, profile: str) -> Account:
        account = self.accounts.get(profile)
        if account is None:
            account = self.accounts[profile] = Account()
        return account

    @staticmethod
    def _check_amount(value: object) -> int:
        if not is_valid_int(value):
            raise _Reject(ErrorCode.INVALID_NUMBER)
        assert isinstance(value, int)
        if value <= 0:
            raise _Reject(ErrorCode.INVALID_AMOUNT)
        return value

    @staticmethod
    def _check_price(value: object, config: MarketConfig) -> int:
        if not is_valid_int(value):
            raise _Reject(ErrorCode.INVALID_NUMBER, "price must be an integer of price units")
        assert isinstance(value, int)
        if value <= 0 or value % config.tick:
            raise _Reject(ErrorCode.INVALID_PRICE)
        return value

    @staticmethod
    def _check_size(value: object, config: MarketConfig) -> int:
        if not is_valid_int(value):
            raise _Reject(ErrorCode.INVALID_NUMBER, "size must be an integer of size units")
        assert isinstance(value, int)
        if value <= 0 or value % config.lot:
            raise _Reject(ErrorCode.INVALID_SIZE)
        if value < config.min_size:
            raise _Reject(ErrorCode.SIZE_BELOW_MINIMUM)
        if value > config.max_size:
            raise _Reject(ErrorCode.SIZE_ABOVE_MAXIMUM)
        return value

    def _release(self, order: Order) -> None:
        """Return what an order still reserves to its account's free balance."""
        if order.reserved:
            account = self.accounts[order.profile]
            account.reserved -= order.reserved
            account.free += order.reserved
            order.reserved = 0
            self._dirty_accounts[order.profile] = account

    def _drop_slot_if_idle(self, market: MarketState, pos: Position) -> None:
        if pos.size == 0 and pos.pending_open == 0 and pos.pending_reduce == 0:
            market.slots.pop((pos.profile, pos.trade_side), None)

    def _cancel_resting(self, market: MarketState, order: Order, reason: e.CancelReason) -> None:
        market.book.remove(order)
        pos = market.slots[(order.profile, order.trade_side)]
        if order.direction:
            pos.pending_reduce -= order.remaining
            self._dirty_positions[id(pos)] = pos
        else:
            pos.pending_open -= order.remaining
        self._release(order)
        self._out.append(
            _OrderCancelled(
                self._next_version(),
                self._ts,
                order.order_id,
                order.profile,
                order.market_id,
                order.remaining,
                int(reason),
            )
        )
        self._drop_slot_if_idle(market, pos)

    def _cancel_slot_orders(
        self, market: MarketState, pos: Position, reason: e.CancelReason, *, reduce_only: bool
    ) -> None:
        """Cancel the resting orders of one position slot (reducing ones, or all)."""
        mine = [
            o
            for o in market.book.orders.values()
            if o.profile == pos.profile
            and o.trade_side == pos.trade_side
            and (o.direction or not reduce_only)
        ]
        for order in sorted(mine, key=lambda o: o.order_id):
            self._cancel_resting(market, order, reason)

    def _set_triggers(
        self, pos: Position, take_profit: int | None, stop_loss: int | None, reference: int
    ) -> None:
        """Validate TP/SL against a reference price (long: TP above, SL below)."""
        long = pos.trade_side
        if take_profit is not None and (take_profit > reference) != long:
            raise _Reject(ErrorCode.INVALID_TRIGGER_PRICE, "take-profit on the wrong side")
        if stop_loss is not None and (stop_loss < reference) != long:
            raise _Reject(ErrorCode.INVALID_TRIGGER_PRICE, "stop-loss on the wrong side")

    # -- wallets, deposits, withdrawals, delegation ---------------------------------------------

    def _wallet(self, profile: str) -> Wallet:
        wallet = self.wallets.get(profile)
        if wallet is None:
            wallet = self.wallets[profile] = Wallet()
        return wallet

    def _mint(self, cmd: c.Mint) -> None:
        profile = cmd.profile
        self._check_owner(profile, "system accounts have no wallet")
        amount = self._check_amount(cmd.amount)
        wallet = self._wallet(profile)
        wallet.balance += amount
        wallet.minted += amount
        self._out.append(e.Minted(self._next_version(), self._ts, profile, amount, wallet.balance))

    def _deposit(self, cmd: c.Deposit) -> None:
        amount = self._check_amount(cmd.amount)
        wallet = self.wallets.get(cmd.profile)
        if wallet is None or wallet.balance < amount:
            raise _Reject(ErrorCode.INSUFFICIENT_WALLET_BALANCE)
        wallet.balance -= amount
        account = self._account(cmd.profile)
        account.free += amount
        account.deposited += amount
        self._out.append(
            e.Deposited(
                self._next_version(), self._ts, cmd.profile, amount, account.free, wallet.balance
            )
        )

    def _withdraw(self, cmd: c.Withdraw) -> None:
        amount = self._check_amount(cmd.amount)
        account = self.accounts.get(cmd.profile)
        if account is None:
            raise _Reject(ErrorCode.NOT_ENOUGH_DEPOSITS)
        if amount > account.free:
            total = account.free + account.reserved + self._margin_of(cmd.profile)
            if amount > total:
                raise _Reject(ErrorCode.NOT_ENOUGH_DEPOSITS)
            raise _Reject(ErrorCode.NOT_ENOUGH_TRADING_BALANCE)
        account.free -= amount
        account.withdrawn += amount
        wallet = self._wallet(cmd.profile)
        wallet.balance += amount
        self._out.append(
            e.Withdrawn(
                self._next_version(), self._ts, cmd.profile, amount, account.free, wallet.balance
            )
        )

    def _margin_of(self, profile: str) -> int:
        return sum(
            pos.margin
            for market in self.markets.values()
            for side in (True, False)
            if (pos := market.slots.get((profile, side))) is not None
        )

    def _enable_delegation(self, cmd: c.EnableDelegation) -> None:
        key = normalise_public_key(cmd.delegate_public_key)
        if key is None:
            raise _Reject(ErrorCode.INVALID_DELEGATION, "delegate key must be 32 bytes of hex")
        if not is_valid_int(cmd.expires_at) or cmd.expires_at <= self._ts:
            raise _Reject(ErrorCode.INVALID_DELEGATION, "expiry must be a future time (ms)")
        self.delegations[cmd.profile] = (key, cmd.expires_at)
        self._out.append(
            e.DelegationEnabled(self._next_version(), self._ts, cmd.profile, key, cmd.expires_at)
        )

    def _disable_delegation(self, cmd: c.DisableDelegation) -> None:
        if self.delegations.pop(cmd.profile, None) is None:
            raise _Reject(ErrorCode.INVALID_DELEGATION, "no delegation to disable")
        self._out.append(e.DelegationDisabled(self._next_version(), self._ts, cmd.profile))

    # -- orders ----------------------------------------------------------------------------------

    def _place_limit(self, cmd: c.PlaceLimitOrder) -> None:
        market = self._market(cmd.market_id)
        price = self._check_price(cmd.price, market.config)
        restriction = cmd.restriction
        if type(restriction) not in (int, c.Restriction) or not 0 <= restriction <= 3:
            raise _Reject(ErrorCode.INVALID_RESTRICTION)
        restriction = int(restriction)
        self._place(market, cmd, price, restriction, cmd.take_profit, cmd.stop_loss)

    def _place_market(self, cmd: c.PlaceMarketOrder) -> None:
        market = self._market(cmd.market_id)
        self._place(market, cmd, None, IOC, cmd.take_profit, cmd.stop_loss)

    def _place(
        self,
        market: MarketState,
        cmd: c.PlaceLimitOrder | c.PlaceMarketOrder,
        price: int | None,
        restriction: int,
        take_profit: int | None,
        stop_loss: int | None,
    ) -> None:
        config = market.config
        if market.paused:
            raise _Reject(ErrorCode.MARKET_PAUSED)
        trade_side = cmd.trade_side
        direction = cmd.direction
        if type(trade_side) is not bool or type(direction) is not bool:
            raise _Reject(ErrorCode.INVALID_FLAG)
        size = cmd.size
        if (
            type(size) is not int
            or size % config.lot
            or not config.min_size <= size <= config.max_size
        ) and not self._closes_dust(market, cmd, size):
            self._check_size(size, config)  # raises with the precise code
        leverage = cmd.leverage
        if type(leverage) is not int or not 1 <= leverage <= config.max_leverage:
            if not is_valid_int(leverage):
                raise _Reject(ErrorCode.INVALID_NUMBER, "leverage must be an integer")
            raise _Reject(ErrorCode.INVALID_LEVERAGE)
        profile = cmd.profile
        is_buy = trade_side != direction
        book = market.book
        if is_buy:
            opposite = -book.ask_keys[-1] if book.ask_keys else None
        else:
            opposite = book.bid_keys[-1] if book.bid_keys else None
        crosses = opposite is not None and (
            price is None or (price >= opposite if is_buy else price <= opposite)
        )
        pos = market.slots.get((profile, trade_side))
        reserve = 0
        if direction:
            if take_profit is not None or stop_loss is not None:
                raise _Reject(ErrorCode.INVALID_TRIGGER_PRICE, "TP/SL go with opening orders")
            if pos is None or pos.size == 0:
                raise _Reject(ErrorCode.REDUCE_OVER_POSITION, "no position to reduce")
            if leverage != pos.leverage:
                raise _Reject(ErrorCode.LEVERAGE_DIFFERS_ON_CLOSE)
            if size > pos.size - pos.pending_reduce:
                raise _Reject(ErrorCode.REDUCE_OVER_POSITION)
            base = CLOSE if size == pos.size else DECREASE
        else:
            if pos is not None and (pos.size or pos.pending_open) and pos.leverage != leverage:
                raise _Reject(ErrorCode.LEVERAGE_DIFFERS_ON_INCREASE)
            base = INCREASE if pos is not None and pos.size else OPEN
            # TP/SL and the position cap are judged at the order's price; a market order's
            # is the mark price, or the best opposite price when there is no mark yet
            reference = price if price is not None else (market.mark_price() or opposite)
            if take_profit is not None or stop_loss is not None:
                for trigger in (take_profit, stop_loss):
                    if trigger is not None:
                        self._check_price(trigger, config)
                if reference is not None:
                    probe = Position(profile, 0, trade_side, 0, leverage)
                    self._set_triggers(probe, take_profit, stop_loss, reference)
            if reference is not None:
                held = (pos.size + pos.pending_open) if pos is not None else 0
                if (held + size) * reference * market.mul > config.max_position_value:
                    raise _Reject(ErrorCode.MAX_POSITION_VALUE)
            account = self.accounts.get(profile)
            if price is not None:
                # An order that cannot take rests whole and pays at most the maker fee.
                notional = price * size * market.mul
                fee_bps = config.taker_fee_bps if crosses else config.maker_fee_bps
                reserve = -(-notional // leverage) + -(-(notional * fee_bps) // BPS_ONE)
                if account is None or account.free < reserve:
                    raise _Reject(ErrorCode.INVALID_INITIAL_MARGIN)
            elif account is None or account.free < self._first_lot_cost(
                market, profile, is_buy, leverage
            ):
                raise _Reject(ErrorCode.INVALID_INITIAL_MARGIN)
        # restrictions that refuse before anything happens
        if price is None:
            if opposite is None:
                raise _Reject(ErrorCode.NOT_ENOUGH_LIQUIDITY)
        elif restriction == POST_ONLY:
            if crosses:
                raise _Reject(ErrorCode.POST_ONLY_WOULD_TAKE)
        elif restriction == FOK and self._fillable(market, profile, is_buy, price, size) < size:
            raise _Reject(ErrorCode.NOT_ENOUGH_LIQUIDITY, "fill-or-kill cannot fill in full")
        # accepted
        market_id = config.market_id
        if pos is None:
            market.position_counter += 1
            pos = market.slots[(profile, trade_side)] = Position(
                profile,
                market_id,
                trade_side,
                (market.position_counter << 64) | market_id,
                leverage,
            )
        elif not direction and pos.size == 0 and pos.pending_open == 0:
            pos.leverage = leverage
        self.order_counter += 1
        order_type = base if trade_side else base + 1
        ts = self._ts
        order = Order(
            (self.order_counter << 64) | market_id,
            profile,
            market_id,
            trade_side,
            direction,
            order_type,
            price if price is not None else 0,
            size,
            leverage,
            pos.trade_id,
            ts,
            is_market=price is None,
            restriction=restriction,
            reserved=reserve,
        )
        if take_profit is not None or stop_loss is not None:
            order.take_profit = take_profit
            order.stop_loss = stop_loss
        self.version += 1
        self._out.append(
            _OrderAccepted(
                self.version,
                ts,
                order.order_id,
                profile,
                market_id,
                trade_side,
                direction,
                order_type,
                price is None,
                restriction,
                price,
                size,
                leverage,
                pos.trade_id,
                take_profit,
                stop_loss,
            )
        )
        if reserve:
            account = self.accounts[profile]
            account.free -= reserve
            account.reserved += reserve
            self._dirty_accounts[profile] = account
        if crosses or restriction == IOC:
            self._execute_taker(market, order, pos, price)
        else:  # the common case: a passive order rests at once
            book.add(order)
            if direction:
                pos.pending_reduce += size
                self._dirty_positions[id(pos)] = pos
            else:
                pos.pending_open += size

    @staticmethod
    def _closes_dust(
        market: MarketState, cmd: c.PlaceLimitOrder | c.PlaceMarketOrder, size: int
    ) -> bool:
        """A reducing order below the minimum size that closes all that is left of its
        position: partial fills can leave less than one minimum order, which must still be
        closable (exchange-rules.md, docs)."""
        if not cmd.direction or size <= 0 or size >= market.config.min_size:
            return False
        if size % market.config.lot:
            return False
        pos = market.slots.get((cmd.profile, cmd.trade_side))
        return pos is not None and size == pos.size - pos.pending_reduce

    def _execute_taker(
        self, market: MarketState, order: Order, pos: Position, limit: int | None
    ) -> None:
        """Match an accepted order against the book, then rest or cancel what is left."""
        book = market.book
        out_of_balance = False
        if order.is_buy:
            if book.ask_keys and (limit is None or -book.ask_keys[-1] <= limit):
                out_of_balance = self._match(market, order, limit)
        elif book.bid_keys and (limit is None or book.bid_keys[-1] >= limit):
            out_of_balance = self._match(market, order, limit)
        if order.remaining:
            if order.is_market or order.restriction == IOC:
                self._release(order)
                if not order.is_market:
                    reason = e.CancelReason.IMMEDIATE_OR_CANCEL
                elif out_of_balance:
                    reason = e.CancelReason.INSUFFICIENT_BALANCE
                else:
                    reason = e.CancelReason.NO_LIQUIDITY
                self._out.append(
                    _OrderCancelled(
                        self._next_version(),
                        self._ts,
                        order.order_id,
                        order.profile,
                        order.market_id,
                        order.remaining,
                        int(reason),
                    )
                )
            else:
                book.add(order)
                if order.direction:
                    pos.pending_reduce += order.remaining
                    self._dirty_positions[id(pos)] = pos
                else:
                    pos.pending_open += order.remaining
                    config = market.config
                    notional = order.price * order.remaining * market.mul
                    needed = ceil_div(notional, order.leverage) + ceil_div(
                        notional * config.maker_fee_bps, BPS_ONE
                    )
                    excess = order.reserved - needed
                    if excess > 0:
                        account = self.accounts[order.profile]
                        order.reserved = needed
                        account.reserved -= excess
                        account.free += excess
                        self._dirty_accounts[order.profile] = account
        else:
            self._release(order)
        self._drop_slot_if_idle(market, pos)

    def _fillable(
        self, market: MarketState, profile: str, is_buy: bool, limit: int, wanted: int
    ) -> int:
        """Size other profiles offer at ``limit`` or better (own orders would be cancelled)."""
        total = 0
        for price, level in market.book.levels(not is_buy):
            if (price > limit) if is_buy else (price < limit):
                break
            for maker in level.values():
                if maker.profile != profile:
                    total += maker.remaining
                    if total >= wanted:
                        return total
        return total

    @staticmethod
    def _first_lot_cost(market: MarketState, profile: str, is_buy: bool, leverage: int) -> int:
        """Margin and taker fee of one lot at the first price an opening market order could
        fill at (its own orders are skipped: self-match cancels them). An order that cannot
        pay for that lot would fill nothing, so it is refused rather than accepted and
        cancelled. 1 when no other profile's order rests on that side."""
        for price, level in market.book.levels(not is_buy):
            if any(maker.profile != profile for maker in level.values()):
                notional = price * market.config.lot * market.mul
                fee = ceil_div(notional * market.config.taker_fee_bps, BPS_ONE)
                return ceil_div(notional, leverage) + fee
        return 1

    def _affordable(self, market: MarketState, order: Order, price: int, wanted: int) -> int:
        """For a market order opening a position: the largest size the free balance pays."""
        config = market.config
        free = self.accounts[order.profile].free
        unit = price * market.mul
        fee_bps = config.taker_fee_bps
        lev = order.leverage
        notional = unit * wanted
        if -(-notional // lev) - (-(notional * fee_bps) // BPS_ONE) <= free:
            return wanted  # the common case, without the search below
        lot = config.lot

        def cost(size: int) -> int:
            notional = unit * size
            return ceil_div(notional, lev) + ceil_div(notional * fee_bps, BPS_ONE)

        if cost(wanted) <= free:
            return wanted
        size = free * lev * BPS_ONE // (unit * (BPS_ONE + lev * fee_bps))
        size -= size % lot
        while size > 0 and cost(size) > free:
            size -= lot
        return max(size, 0)

    def _match(self, market: MarketState, taker: Order, limit: int | None) -> bool:
        """Trade ``taker`` against the book up to ``limit``. True when an opening market
        order stopped because its free balance pays for no more, with liquidity left."""
        book = market.book
        is_buy = taker.is_buy
        levels = book.asks if is_buy else book.bids
        keys = book.ask_keys if is_buy else book.bid_keys
        opening_market = taker.is_market and not taker.direction
        while taker.remaining and keys:
            price = -keys[-1] if is_buy else keys[-1]
            if limit is not None and ((price > limit) if is_buy else (price < limit)):
                break
            level = levels[price]
            maker = next(iter(level.values()))
            if maker.profile == taker.profile:
                self._cancel_resting(market, maker, e.CancelReason.SELF_MATCH)
                continue
            qty = min(taker.remaining, maker.remaining)
            if opening_market:
                qty = self._affordable(market, taker, price, qty)
                if qty == 0:
                    return True
            self._trade(market, maker, taker, price, qty)
        return False

    def _trade(self, market: MarketState, maker: Order, taker: Order, price: int, qty: int) -> None:
        config = market.config
        notional = price * qty * market.mul
        maker_pos = market.slots[(maker.profile, maker.trade_side)]
        if maker.direction:
            maker_pos.pending_reduce -= qty
        else:
            maker_pos.pending_open -= qty
        maker_leg = self._fill(market, maker, maker_pos, qty, notional, config.maker_fee_bps)
        taker_pos = market.slots[(taker.profile, taker.trade_side)]
        taker_leg = self._fill(market, taker, taker_pos, qty, notional, config.taker_fee_bps)
        if maker.remaining == 0:
            market.book.remove(maker)
            self._release(maker)
            self._drop_slot_if_idle(market, maker_pos)
        market.last_trade_price = price
        self._out.append(
            _TradeExecuted(
                self._next_version(), self._ts, config.market_id, price, qty, maker_leg, taker_leg
            )
        )

    def _fill(
        self,
        market: MarketState,
        order: Order,
        pos: Position,
        qty: int,
        notional: int,
        fee_bps: int,
    ) -> e.FillLeg:
        """Apply one side of a trade to its order, position and account."""
        profile = order.profile
        account = self.accounts[profile]
        fee = -(-(notional * fee_bps) // BPS_ONE) if fee_bps else 0
        order.remaining -= qty
        if not order.direction:
            margin = -(-notional // pos.leverage)
            cost = margin + fee
            held = order.reserved
            if held >= cost:
                order.reserved = held - cost
                account.reserved -= cost
            else:
                # A limit order reserved at its own price; fills at better prices round up
                # part by part and can need a few units more than the whole. Those come from
                # free balance, and what free balance lacks is margin the position goes without.
                order.reserved = 0
                account.reserved -= held
                extra = min(cost - held, max(account.free, 0))
                account.free -= extra
                margin -= cost - held - extra
            opened = pos.size == 0
            pos.size += qty
            pos.entry_value += notional
            pos.margin += margin
            if order.take_profit is not None or order.stop_loss is not None or opened:
                if order.take_profit is not None or opened:
                    pos.take_profit = order.take_profit
                if order.stop_loss is not None or opened:
                    pos.stop_loss = order.stop_loss
            pnl = -fee
        else:
            size = pos.size
            long = pos.trade_side
            if qty == size:
                removed = pos.entry_value
                released = pos.margin
            else:
                share = pos.entry_value * qty
                removed = ceil_div(share, size) if long else floor_div(share, size)
                released = floor_div(pos.margin * qty, size)
            realised = notional - removed if long else removed - notional
            pos.size = size - qty
            pos.entry_value -= removed
            pos.margin -= released
            credit = released + realised - fee
            if order.order_type >= LIQUIDATION:
                self._liquidation_pot += credit
            elif credit >= 0:
                account.free += credit
            else:
                self._cover(pos, -credit)
            if pos.size == 0:
                pos.take_profit = pos.stop_loss = None
            pnl = realised - fee
        self._dirty_accounts[profile] = account
        self._dirty_positions[id(pos)] = pos
        if fee:
            # no BalanceChanged for the fee account: its balance is the sum of fill fees
            self._account(FEES_ACCOUNT).free += fee
        return e.FillLeg(
            profile,
            order.order_id,
            order.order_type,
            order.trade_id,
            order.leverage,
            order.is_buy,
            fee,
            pnl,
            order.remaining,
        )

    def _cover(self, pos: Position, deficit: int) -> int:
        """Take a loss from what is left of the position's margin, then from the insurance
        fund. Returns the shortfall the fund covered."""
        from_margin = min(deficit, pos.margin)
        pos.margin -= from_margin
        shortfall = deficit - from_margin
        if shortfall:
            fund = self._account(INSURANCE_FUND)
            fund.free -= shortfall
            self._dirty_accounts[INSURANCE_FUND] = fund
        return shortfall

    def _cancel(self, cmd: c.CancelOrder) -> None:
        market = self._market(cmd.market_id)
        self._cancel_one(market, cmd.profile, cmd.order_id)

    def _cancel_one(self, market: MarketState, profile: str, order_id: int) -> None:
        order = market.book.orders.get(order_id)
        if order is None or order.profile != profile:
            raise _Reject(ErrorCode.ORDER_NOT_FOUND)
        self._cancel_resting(market, order, e.CancelReason.USER)

    def _run_nested(self, name: str, command: c.Command, action: Callable[[], None]) -> None:
        """Run one part of a batch: a refusal rejects that part only."""
        try:
            action()
        except _Reject as rejection:
            self._reject(name, command, rejection.code, rejection.detail)

    def _place_batch(self, cmd: c.UserCommand, orders: list[Any]) -> None:
        for sub in orders:
            handler: Callable[[Any], None] = (
                self._place_limit if isinstance(sub, c.PlaceLimitOrder) else self._place_market
            )
            if sub.profile != cmd.profile:
                self._reject(type(sub).__name__, sub, ErrorCode.NOT_AUTHORISED)
                continue
            self._run_nested(type(sub).__name__, sub, partial(handler, sub))

    def _check_batch(self, items: list[Any]) -> list[Any]:
        if not items:
            raise _Reject(ErrorCode.TOO_MANY_ORDERS, "a batch needs 1..20 items")
        if len(items) > MAX_BATCH:
            raise _Reject(ErrorCode.TOO_MANY_ORDERS)
        return items

    def _place_multiple(self, cmd: c.PlaceMultipleOrders) -> None:
        self._place_batch(cmd, self._check_batch(cmd.orders))

    def _cancel_multiple(self, cmd: c.CancelMultipleOrders) -> None:
        market = self._market(cmd.market_id)
        for order_id in self._check_batch(cmd.order_ids):
            self._run_nested(
                "CancelOrder",
                cmd,
                partial(self._cancel_one, market, cmd.profile, order_id),
            )

    def _cancel_and_place(self, cmd: c.CancelAndPlaceMultipleOrders) -> None:
        market = self._market(cmd.market_id)
        # either list may be empty (pull quotes, or place without cancelling), not both
        cancels = self._check_batch(cmd.cancel_order_ids) if cmd.cancel_order_ids else []
        orders = self._check_batch(cmd.orders) if cmd.orders or not cancels else []
        for order_id in cancels:
            self._run_nested(
                "CancelOrder",
                cmd,
                partial(self._cancel_one, market, cmd.profile, order_id),
            )
        self._place_batch(cmd, orders)

    # -- positions -------------------------------------------------------------------------------

    def _open_position(self, cmd: Any) -> tuple[MarketState, Position]:
        market = self._market(cmd.market_id)
        side = cmd.trade_side
        pos = market.slots.get((cmd.profile, side))
        if pos is None or pos.size == 0:
            raise _Reject(ErrorCode.NO_POSITION)
        return market, pos

    def _trigger_reference(self, market: MarketState, pos: Position) -> int:
        mark = market.mark_price()
        if mark is not None:
            return mark
        return pos.entry_value // (pos.size * market.mul)

    def _update_take_profit(self, cmd: c.UpdateTakeProfit) -> None:
        market, pos = self._open_position(cmd)
        if cmd.price is not None:
            price = self._check_price(cmd.price, market.config)
            self._set_triggers(pos, price, None, self._trigger_reference(market, pos))
        pos.take_profit = cmd.price
        self._dirty_positions[id(pos)] = pos

    def _update_stop_loss(self, cmd: c.UpdateStopLoss) -> None:
        market, pos = self._open_position(cmd)
        if cmd.price is not None:
            price = self._check_price(cmd.price, market.config)
            self._set_triggers(pos, None, price, self._trigger_reference(market, pos))
        pos.stop_loss = cmd.price
        self._dirty_positions[id(pos)] = pos

    def _add_margin(self, cmd: c.AddMargin) -> None:
        market, pos = self._open_position(cmd)
        amount = self._check_amount(cmd.amount)
        account = self.accounts[cmd.profile]
        if account.free < amount:
            raise _Reject(ErrorCode.INSUFFICIENT_BALANCE)
        account.free -= amount
        pos.margin += amount
        self._dirty_accounts[cmd.profile] = account
        self._dirty_positions[id(pos)] = pos
        self._out.append(
            e.MarginAdded(
                self._next_version(),
                self._ts,
                cmd.profile,
                market.config.market_id,
                pos.trade_side,
                amount,
            )
        )

    def _collapse(self, cmd: c.CollapsePosition) -> None:
        market = self._market(cmd.market_id)
        long = market.slots.get((cmd.profile, True))
        short = market.slots.get((cmd.profile, False))
        if long is None or short is None or not long.size or not short.size:
            raise _Reject(ErrorCode.NO_POSITION, "collapsing needs a long and a short")
        self._cancel_slot_orders(market, long, e.CancelReason.POSITION_CLOSED, reduce_only=True)
        self._cancel_slot_orders(market, short, e.CancelReason.POSITION_CLOSED, reduce_only=True)
        qty = min(long.size, short.size)
        released_total = realised = 0
        for pos in (long, short):
            if qty == pos.size:
                removed, released = pos.entry_value, pos.margin
            else:
                share = pos.entry_value * qty
                rounding = ceil_div if pos.trade_side else floor_div
                removed = rounding(share, pos.size)
                released = floor_div(pos.margin * qty, pos.size)
            pos.size -= qty
            pos.entry_value -= removed
            pos.margin -= released
            released_total += released
            realised += -removed if pos.trade_side else removed
            if pos.size == 0:
                pos.take_profit = pos.stop_loss = None
            self._dirty_positions[id(pos)] = pos
        credit = released_total + realised
        pnl = realised
        account = self.accounts[cmd.profile]
        if credit >= 0:
            account.free += credit
        else:
            remaining = long if long.size else short
            self._cover(remaining, -credit)
        self._dirty_accounts[cmd.profile] = account
        self._out.append(
            e.PositionsCollapsed(
                self._next_version(), self._ts, cmd.profile, market.config.market_id, qty, pnl
            )
        )
        for pos in (long, short):
            self._drop_slot_if_idle(market, pos)

    # -- prices, funding, liquidation -------------------------------------------------------------

    def _set_oracle_price(self, cmd: c.SetOraclePrice) -> None:
        market = self._market(cmd.market_id)
        price = cmd.price
        if not is_valid_int(price):
            raise _Reject(ErrorCode.INVALID_NUMBER)
        assert isinstance(price, int)
        if price <= 0:
            raise _Reject(ErrorCode.INVALID_PRICE)
        now = self._ts
        market.premium_acc += market.last_premium * (now - market.last_sample_ts)
        market.last_sample_ts = now
        market.index_price = price
        market.last_premium = market.premium()
        mark = market.mark_price()
        assert mark is not None
        self._out.append(
            e.OraclePriceSet(
                self._next_version(),
                now,
                market.config.market_id,
                price,
                mark,
                market.predicted_rate(now),
            )
        )
        self._fire_triggers(market, mark)

    def _fire_triggers(self, market: MarketState, mark: int) -> None:
        armed = sorted(
            (key, pos)
            for key, pos in market.slots.items()
            if pos.size and (pos.take_profit is not None or pos.stop_loss is not None)
        )
        for _key, pos in armed:
            if not pos.size:
                continue
            long = pos.trade_side
            tp, sl = pos.take_profit, pos.stop_loss
            if tp is not None and (mark >= tp if long else mark <= tp):
                hit, price = True, tp
            elif sl is not None and (mark <= sl if long else mark >= sl):
                hit, price = False, sl
            else:
                continue
            book = market.book
            if (book.best_bid() if long else book.best_ask()) is None:
                continue  # nothing to close into: stay armed until there is
            self._out.append(
                e.TpSlTriggered(
                    self._next_version(),
                    self._ts,
                    pos.profile,
                    market.config.market_id,
                    long,
                    hit,
                    price,
                    mark,
                )
            )
            pos.take_profit = pos.stop_loss = None
            self._dirty_positions[id(pos)] = pos
            self._close_position(market, pos, TPSL, None)
            if pos.size:  # the book could not take it all: what is left stays protected
                pos.take_profit, pos.stop_loss = tp, sl

    def _close_position(
        self, market: MarketState, pos: Position, base: int, limit: int | None
    ) -> Order:
        """Close a whole position with a reduce-only taker order (TP/SL or liquidation)."""
        self._cancel_slot_orders(
            market,
            pos,
            e.CancelReason.POSITION_CLOSED if base == TPSL else e.CancelReason.LIQUIDATION,
            reduce_only=base == TPSL,
        )
        config = market.config
        self.order_counter += 1
        order = Order(
            (self.order_counter << 64) | config.market_id,
            pos.profile,
            config.market_id,
            pos.trade_side,
            True,
            order_type_code(base, pos.trade_side),
            limit or 0,
            pos.size,
            pos.leverage,
            pos.trade_id,
            self._ts,
            is_market=limit is None,
            restriction=IOC,
        )
        self._out.append(
            _OrderAccepted(
                self._next_version(),
                self._ts,
                order.order_id,
                pos.profile,
                config.market_id,
                pos.trade_side,
                True,
                order.order_type,
                limit is None,
                IOC,
                limit,
                pos.size,
                pos.leverage,
                pos.trade_id,
                None,
                None,
            )
        )
        if base == LIQUIDATION:
            # book the unfilled rest in _liquidate; keep the slot alive until then
            self._match(market, order, limit)
            return order
        self._execute_taker(market, order, pos, limit)
        return order

    def _settle_funding(self, cmd: c.SettleFunding) -> None:
        market = self._market(cmd.market_id)
        config = market.config
        now = self._ts
        if now < market.interval_start + config.funding_interval_ms:
            raise _Reject(ErrorCode.FUNDING_NOT_DUE)
        mark = market.mark_price()
        if mark is None:
            raise _Reject(ErrorCode.NO_ORACLE_PRICE)
        rate = market.predicted_rate(now)
        mul = market.mul
        payments: list[e.FundingPayment] = []
        paid = received = 0
        if rate:
            longs_pay = rate > 0
            magnitude = abs(rate)
            for (profile, side), pos in sorted(market.slots.items()):
                if not pos.size:
                    continue
                owed = magnitude * pos.size * mark * mul
                if side == longs_pay:
                    amount = ceil_div(owed, RATE_ONE)
                    paid += amount
                    if profile == INSURANCE_FUND:
                        fund = self._account(INSURANCE_FUND)
                        fund.free -= amount
                        self._dirty_accounts[INSURANCE_FUND] = fund
                    else:
                        self._cover(pos, amount)
                    signed = -amount
                else:
                    amount = floor_div(owed, RATE_ONE)
                    received += amount
                    if profile == INSURANCE_FUND:
                        fund = self._account(INSURANCE_FUND)
                        fund.free += amount
                        self._dirty_accounts[INSURANCE_FUND] = fund
                    else:
                        pos.margin += amount
                    signed = amount
                self._dirty_positions[id(pos)] = pos
                payments.append(e.FundingPayment(profile, side, pos.trade_id, pos.size, signed))
        remainder = paid - received
        if remainder:
            house = self._account(HOUSE_ACCOUNT)
            house.free += remainder
            self._dirty_accounts[HOUSE_ACCOUNT] = house
        market.premium_acc = 0
        market.last_sample_ts = now
        market.interval_start = now
        market.last_funding_ts = now
        market.funding_rate = rate
        self._out.append(
            e.FundingSettled(
                self._next_version(), now, config.market_id, rate, mark, payments, remainder
            )
        )

    def liquidatable(self, market_id: int) -> list[tuple[str, bool]]:
        """(profile, side) of every position of a market a keeper may liquidate now."""
        market = self.markets[market_id]
        mark = market.mark_price()
        if mark is None:
            return []
        config = market.config
        mul = market.mul
        return sorted(
            key
            for key, pos in market.slots.items()
            if key[0] != INSURANCE_FUND
            and is_liquidatable(
                pos.trade_side,
                pos.size,
                pos.entry_value,
                pos.margin,
                mark,
                mul,
                config.maintenance_margin_bps,
            )
        )

    def _liquidate(self, cmd: c.Liquidate) -> None:
        market = self._market(cmd.market_id)
        if not is_address(cmd.profile):
            raise _Reject(ErrorCode.INVALID_ADDRESS)
        # system accounts' balances have fixed meanings: none takes the liquidator's share
        self._check_owner(cmd.liquidator, "a system account cannot be the liquidator")
        side = cmd.trade_side
        pos = market.slots.get((cmd.profile, side))
        if pos is None or not pos.size or cmd.profile == INSURANCE_FUND:
            raise _Reject(ErrorCode.NO_POSITION)
        mark = market.mark_price()
        if mark is None:
            raise _Reject(ErrorCode.NO_ORACLE_PRICE)
        config = market.config
        mul = market.mul
        if not is_liquidatable(
            side, pos.size, pos.entry_value, pos.margin, mark, mul, config.maintenance_margin_bps
        ):
            raise _Reject(ErrorCode.NOT_LIQUIDATABLE)
        size = pos.size
        bankrupt = bankruptcy_price(side, pos.size, pos.entry_value, pos.margin, mul)
        tick = config.tick
        if side:  # a long sells no lower than its bankruptcy price
            limit = max(ceil_div(bankrupt.numerator, bankrupt.denominator * tick) * tick, tick)
        else:
            limit = max(floor_div(bankrupt.numerator, bankrupt.denominator * tick) * tick, tick)
        self._liquidation_pot = 0
        order = self._close_position(market, pos, LIQUIDATION, limit)
        taken_over = pos.size
        if order.remaining:
            self._out.append(
                _OrderCancelled(
                    self._next_version(),
                    self._ts,
                    order.order_id,
                    pos.profile,
                    config.market_id,
                    order.remaining,
                    int(e.CancelReason.LIQUIDATION),
                )
            )
        if taken_over:
            # the insurance fund takes the rest over at the bankruptcy price: its cost basis is
            # the position's, less (long) or plus (short) the margin that backed it
            fund_pos = market.slots.get((INSURANCE_FUND, side))
            if fund_pos is None:
                market.position_counter += 1
                fund_pos = market.slots[(INSURANCE_FUND, side)] = Position(
                    INSURANCE_FUND,
                    config.market_id,
                    side,
                    (market.position_counter << 64) | config.market_id,
                    1,
                )
            fund_pos.size += taken_over
            fund_pos.entry_value += (
                pos.entry_value - pos.margin if side else (pos.entry_value + pos.margin)
            )
            self._dirty_positions[id(fund_pos)] = fund_pos
            pos.size = pos.entry_value = pos.margin = 0
        pos.take_profit = pos.stop_loss = None
        self._dirty_positions[id(pos)] = pos
        pot = self._liquidation_pot
        self._liquidation_pot = 0
        to_user = to_liquidator = to_insurance = to_house = shortfall = 0
        if pot > 0:
            to_user = pot * LIQUIDATION_SPLIT[0] // 100
            to_liquidator = pot * LIQUIDATION_SPLIT[1] // 100
            to_insurance = pot * LIQUIDATION_SPLIT[2] // 100
            to_house = pot - to_user - to_liquidator - to_insurance
            for profile, amount in (
                (cmd.profile, to_user),
                (cmd.liquidator, to_liquidator),
                (INSURANCE_FUND, to_insurance),
                (HOUSE_ACCOUNT, to_house),
            ):
                if amount:
                    account = self._account(profile)
                    account.free += amount
                    self._dirty_accounts[profile] = account
        elif pot < 0:
            shortfall = -pot
            fund = self._account(INSURANCE_FUND)
            fund.free -= shortfall
            self._dirty_accounts[INSURANCE_FUND] = fund
        self._out.append(
            e.PositionLiquidated(
                self._next_version(),
                self._ts,
                cmd.profile,
                config.market_id,
                side,
                pos.trade_id,
                cmd.liquidator,
                mark,
                size,
                taken_over,
                pot,
                to_user,
                to_liquidator,
                to_insurance,
                to_house,
                shortfall,
            )
        )
        self._drop_slot_if_idle(market, pos)

    # -- operator --------------------------------------------------------------------------------

    def _list_market(self, cmd: c.ListMarket) -> None:
        config = cmd.market
        try:
            config.validate()
        except InvalidInput as exc:
            raise _Reject(ErrorCode.INVALID_MARKET_CONFIG, exc.detail) from None
        if config.market_id in self.markets:
            raise _Reject(ErrorCode.MARKET_EXISTS)
        self.markets[config.market_id] = MarketState(config, self._ts)
        self._out.append(e.MarketListed(self._next_version(), self._ts, config))

    def _pause_market(self, cmd: c.PauseMarket) -> None:
        market = self._market(cmd.market_id)
        market.paused = cmd.paused
        self._out.append(
            e.MarketPaused(self._next_version(), self._ts, market.config.market_id, market.paused)
        )

    # -- state: snapshot, restore, hash ----------------------------------------------------------

    def snapshot(self) -> EngineSnapshot:
        markets = []
        for market_id in sorted(self.markets):
            m = self.markets[market_id]
            orders = [
                OrderSnap(
                    o.order_id,
                    o.profile,
                    o.trade_side,
                    o.direction,
                    o.order_type,
                    o.price,
                    o.size,
                    o.remaining,
                    o.leverage,
                    o.trade_id,
                    o.timestamp,
                    o.restriction,
                    o.reserved,
                    o.take_profit,
                    o.stop_loss,
                )
                for o in sorted(m.book.orders.values(), key=lambda o: o.order_id)
            ]
            positions = [
                PositionSnap(
                    p.profile,
                    p.trade_side,
                    p.trade_id,
                    p.leverage,
                    p.size,
                    p.entry_value,
                    p.margin,
                    p.take_profit,
                    p.stop_loss,
                    p.pending_open,
                    p.pending_reduce,
                )
                for _, p in sorted(m.slots.items())
            ]
            markets.append(
                MarketSnap(
                    m.config,
                    m.paused,
                    m.index_price,
                    m.last_trade_price,
                    m.premium_acc,
                    m.last_premium,
                    m.last_sample_ts,
                    m.interval_start,
                    m.last_funding_ts,
                    m.funding_rate,
                    m.position_counter,
                    orders,
                    positions,
                )
            )
        accounts = [
            AccountSnap(p, a.free, a.reserved, a.deposited, a.withdrawn)
            for p, a in sorted(self.accounts.items())
        ]
        delegations = [
            DelegationSnap(p, key, expiry) for p, (key, expiry) in sorted(self.delegations.items())
        ]
        wallets = [WalletSnap(p, w.balance, w.minted) for p, w in sorted(self.wallets.items())]
        return EngineSnapshot(
            self.version,
            self.last_timestamp,
            self.order_counter,
            markets,
            accounts,
            delegations,
            wallets,
        )

    def snapshot_bytes(self) -> bytes:
        return encode_snapshot(self.snapshot())

    def state_hash(self) -> str:
        """SHA-256 of the canonical snapshot: equal states hash equal, whatever the history."""
        return hashlib.sha256(self.snapshot_bytes()).hexdigest()

    @classmethod
    def restore(cls, data: bytes | EngineSnapshot) -> Engine:
        snap = data if isinstance(data, EngineSnapshot) else decode_snapshot(data)
        engine = cls([], timestamp=snap.last_timestamp)
        engine.version = snap.version
        engine.order_counter = snap.order_counter
        for ms in snap.markets:
            m = MarketState(ms.config, 0)
            m.paused = ms.paused
            m.index_price = ms.index_price
            m.last_trade_price = ms.last_trade_price
            m.premium_acc = ms.premium_acc
            m.last_premium = ms.last_premium
            m.last_sample_ts = ms.last_sample_ts
            m.interval_start = ms.interval_start
            m.last_funding_ts = ms.last_funding_ts
            m.funding_rate = ms.funding_rate
            m.position_counter = ms.position_counter
            for ps in ms.positions:
                pos = Position(
                    ps.profile, ms.config.market_id, ps.trade_side, ps.trade_id, ps.leverage
                )
                pos.size = ps.size
                pos.entry_value = ps.entry_value
                pos.margin = ps.margin
                pos.take_profit = ps.take_profit
                pos.stop_loss = ps.stop_loss
                pos.pending_open = ps.pending_open
                pos.pending_reduce = ps.pending_reduce
                m.slots[(ps.profile, ps.trade_side)] = pos
            for os_ in ms.orders:
                order = Order(
                    os_.order_id,
                    os_.profile,
                    ms.config.market_id,
                    os_.trade_side,
                    os_.direction,
                    os_.order_type,
                    os_.price,
                    os_.size,
                    os_.leverage,
                    os_.trade_id,
                    os_.timestamp,
                    restriction=os_.restriction,
                    reserved=os_.reserved,
                )
                order.remaining = os_.remaining
                order.take_profit = os_.take_profit
                order.stop_loss = os_.stop_loss
                m.book.add(order)
            engine.markets[ms.config.market_id] = m
        for a in snap.accounts:
            engine.accounts[a.profile] = Account(a.free, a.reserved, a.deposited, a.withdrawn)
        for d in snap.delegations:
            engine.delegations[d.profile] = (d.public_key, d.expires_at)
        for w in snap.wallets:
            engine.wallets[w.profile] = Wallet(w.balance, w.minted)
        return engine

    def skip_rejection(self, version: int, timestamp: int) -> None:
        """Replay of a refused command: it changed only the version and the clock."""
        self.version = version
        self.last_timestamp = self._ts = timestamp

    # -- read access for keepers and tests --------------------------------------------------------

    def position(self, profile: str, market_id: int, trade_side: bool) -> Position | None:
        market = self.markets.get(market_id)
        if market is None:
            return None
        pos = market.slots.get((profile, trade_side))
        return pos if pos is not None and pos.size else None

    def account(self, profile: str) -> Account | None:
        return self.accounts.get(profile)

    def wallet(self, profile: str) -> int:
        """What the owner of ``profile`` holds in their wallet (0 for an unknown one)."""
        wallet = self.wallets.get(profile)
        return wallet.balance if wallet is not None else 0
