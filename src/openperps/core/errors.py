"""Error codes: one base class, families, stable numbers.

Codes 1001..1014 are the exchange's published codes (exchange-rules.md, "Error codes") and keep
their numbers. Ours start at 2000, grouped by subsystem:

    2000-2099  engine: input validation and exchange rules of our own
    2100-2199  accounts, delegation and signing (REST edge)
    2200-2299  feed
    2300-2399  event log and read models

Numbers are written out, never derived from declaration order, and are append-only: a code is
never renumbered or reused.

A rejected command is not an exception: the engine returns a ``Rejected`` event carrying the
code. Exceptions are for bad input caught at a boundary (``InvalidInput``) and for bugs.

    OpenPerpsError
     └── InvalidInput        bad input at a boundary (parsing a decimal, a config file)
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    NOT_AUTHORISED = 1001
    MARKET_PAUSED = 1002
    MARKET_NOT_FOUND = 1003
    LEVERAGE_DIFFERS_ON_CLOSE = 1004
    LEVERAGE_DIFFERS_ON_INCREASE = 1005
    INVALID_LEVERAGE = 1006
    NOT_ENOUGH_LIQUIDITY = 1007
    NOT_ENOUGH_BALANCE_TO_EXIT = 1008
    NOT_ENOUGH_TRADING_BALANCE = 1009
    NOT_ENOUGH_DEPOSITS = 1010
    REDUCE_OVER_POSITION = 1011
    LOSS_OVER_COLLATERAL = 1012
    INVALID_MAINTENANCE_MARGIN = 1013
    INVALID_INITIAL_MARGIN = 1014

    INVALID_NUMBER = 2001
    INVALID_SIZE = 2002
    INVALID_PRICE = 2003
    SIZE_BELOW_MINIMUM = 2004
    SIZE_ABOVE_MAXIMUM = 2005
    INSUFFICIENT_BALANCE = 2006
    ORDER_NOT_FOUND = 2007
    POST_ONLY_WOULD_TAKE = 2008
    INVALID_RESTRICTION = 2009
    NO_POSITION = 2010
    INVALID_TRIGGER_PRICE = 2011
    MAX_POSITION_VALUE = 2012
    NOT_LIQUIDATABLE = 2013
    FUNDING_NOT_DUE = 2014
    NO_ORACLE_PRICE = 2015
    MARKET_EXISTS = 2016
    INVALID_ADDRESS = 2017
    INVALID_AMOUNT = 2018
    INVALID_DELEGATION = 2019
    TOO_MANY_ORDERS = 2020
    TIMESTAMP_REGRESSED = 2021
    INVALID_MARKET_CONFIG = 2022
    INVALID_FLAG = 2023
    UNKNOWN_COMMAND = 2024
    REPLAY_DIVERGED = 2025
    NOT_DURABLE = 2026
    INSUFFICIENT_WALLET_BALANCE = 2027
    # the REST edge (openperps.api)
    BAD_REQUEST = 2030
    NOT_READY = 2031
    FAUCET_CLOSED = 2032
    ADMIN_ONLY = 2033
    INTERNAL_ERROR = 2034
    UNKNOWN_ENDPOINT = 2035
    RATE_LIMITED = 2036


MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.NOT_AUTHORISED: "not authorised",
    ErrorCode.MARKET_PAUSED: "market is paused",
    ErrorCode.MARKET_NOT_FOUND: "market not found",
    ErrorCode.LEVERAGE_DIFFERS_ON_CLOSE: "leverage differs from the position's on close",
    ErrorCode.LEVERAGE_DIFFERS_ON_INCREASE: "leverage differs from the position's on increase",
    ErrorCode.INVALID_LEVERAGE: "invalid leverage",
    ErrorCode.NOT_ENOUGH_LIQUIDITY: "not enough liquidity in the book",
    ErrorCode.NOT_ENOUGH_BALANCE_TO_EXIT: "not enough balance to exit",
    ErrorCode.NOT_ENOUGH_TRADING_BALANCE: "not enough trading balance to withdraw",
    ErrorCode.NOT_ENOUGH_DEPOSITS: "not enough deposits to withdraw",
    ErrorCode.REDUCE_OVER_POSITION: "reduce size over position size",
    ErrorCode.LOSS_OVER_COLLATERAL: "loss over collateral",
    ErrorCode.INVALID_MAINTENANCE_MARGIN: "invalid maintenance margin",
    ErrorCode.INVALID_INITIAL_MARGIN: "not enough free balance for the initial margin",
    ErrorCode.INVALID_NUMBER: "not a valid integer amount",
    ErrorCode.INVALID_SIZE: "size must be positive and a multiple of the lot size",
    ErrorCode.INVALID_PRICE: "price must be positive and a multiple of the tick size",
    ErrorCode.SIZE_BELOW_MINIMUM: "size below the market's minimum order size",
    ErrorCode.SIZE_ABOVE_MAXIMUM: "size above the market's maximum order size",
    ErrorCode.INSUFFICIENT_BALANCE: "not enough free balance",
    ErrorCode.ORDER_NOT_FOUND: "order not found",
    ErrorCode.POST_ONLY_WOULD_TAKE: "post-only order would take liquidity",
    ErrorCode.INVALID_RESTRICTION: "invalid order restriction",
    ErrorCode.NO_POSITION: "no open position on that side",
    ErrorCode.INVALID_TRIGGER_PRICE: "take-profit or stop-loss price on the wrong side",
    ErrorCode.MAX_POSITION_VALUE: "position value would exceed the market's maximum",
    ErrorCode.NOT_LIQUIDATABLE: "position is not liquidatable",
    ErrorCode.FUNDING_NOT_DUE: "funding interval has not elapsed",
    ErrorCode.NO_ORACLE_PRICE: "market has no oracle price yet",
    ErrorCode.MARKET_EXISTS: "market already listed",
    ErrorCode.INVALID_ADDRESS: "invalid address",
    ErrorCode.INVALID_AMOUNT: "amount must be a positive integer",
    ErrorCode.INVALID_DELEGATION: "invalid delegation",
    ErrorCode.TOO_MANY_ORDERS: "too many orders in one batch",
    ErrorCode.TIMESTAMP_REGRESSED: "command timestamp earlier than the last one",
    ErrorCode.INVALID_MARKET_CONFIG: "invalid market configuration",
    ErrorCode.INVALID_FLAG: "flag must be a boolean",
    ErrorCode.UNKNOWN_COMMAND: "unknown command",
    ErrorCode.REPLAY_DIVERGED: "the event log and the engine disagree",
    ErrorCode.NOT_DURABLE: "the event log could not store the command; it did not take effect",
    ErrorCode.INSUFFICIENT_WALLET_BALANCE: "not enough USDT in the wallet to deposit",
    ErrorCode.BAD_REQUEST: "malformed request body or parameters",
    ErrorCode.NOT_READY: "the exchange is starting",
    ErrorCode.FAUCET_CLOSED: "the faucet exists on testnet deployments only",
    ErrorCode.ADMIN_ONLY: "operator endpoints need the configured bearer token",
    ErrorCode.INTERNAL_ERROR: "the server failed to answer; its log has the details",
    ErrorCode.UNKNOWN_ENDPOINT: "no such endpoint",
    ErrorCode.RATE_LIMITED: "too many requests; retry after the time Retry-After gives",
}


class OpenPerpsError(Exception):
    """Base of every error OpenPerps raises on purpose; carries a stable code."""

    def __init__(self, code: ErrorCode, detail: str | None = None) -> None:
        self.code = code
        self.detail = detail or MESSAGES[code]
        super().__init__(f"{int(code)}: {self.detail}")


class InvalidInput(OpenPerpsError):
    """Bad input caught at a boundary (a decimal string, a configuration file)."""
