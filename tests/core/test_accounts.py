"""Deposits, withdrawals, delegation and the system accounts."""

from __future__ import annotations

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import FEES_ACCOUNT, INSURANCE_FUND
from openperps.core.errors import ErrorCode
from tests.core.harness import ALICE, APT, BOB, Exchange, only, rejected

DELEGATE = "0x" + "5e" * 32


def test_deposit_credits_free_balance() -> None:
    x = Exchange()
    event = only(x.deposit(ALICE, "12.5"), e.Deposited)
    assert event.amount == x.usd("12.5") and event.free == x.usd("12.5")
    assert only(x.deposit(ALICE, "0.5"), e.Deposited).free == x.usd("13")


def test_withdraw_takes_only_free_balance() -> None:
    x = Exchange()
    assert rejected(x.do(c.Withdraw(timestamp=x.tick(), profile=ALICE, amount=1))) == 1010
    x.deposit(ALICE, "100")
    x.deposit(BOB, "100")
    x.limit(ALICE, "open long", "10", "7.000")  # reserves 7
    withdraw_all = c.Withdraw(timestamp=x.tick(), profile=ALICE, amount=x.usd("100"))
    assert rejected(x.do(withdraw_all)) == ErrorCode.NOT_ENOUGH_TRADING_BALANCE
    too_much = c.Withdraw(timestamp=x.tick(), profile=ALICE, amount=x.usd("101"))
    assert rejected(x.do(too_much)) == ErrorCode.NOT_ENOUGH_DEPOSITS
    x.market_order(BOB, "open short", "10")  # Alice's margin is now in a position
    withdraw_all = c.Withdraw(timestamp=x.tick(), profile=ALICE, amount=x.usd("100"))
    assert rejected(x.do(withdraw_all)) == ErrorCode.NOT_ENOUGH_TRADING_BALANCE
    ok = x.do(c.Withdraw(timestamp=x.tick(), profile=ALICE, amount=x.usd("93")))
    assert only(ok, e.Withdrawn).free == 0


def test_amounts_must_be_positive_integers() -> None:
    x = Exchange()
    for amount in (0, -5):
        assert rejected(x.do(c.Deposit(timestamp=x.tick(), profile=ALICE, amount=amount))) == 2018
    bad = c.Deposit(timestamp=x.tick(), profile=ALICE, amount=1.5)  # type: ignore[arg-type]
    assert rejected(x.do(bad)) == ErrorCode.INVALID_NUMBER


def test_a_delegate_trades_until_expiry_and_never_withdraws() -> None:
    x = Exchange()
    x.deposit(ALICE, "100")
    enable = c.EnableDelegation(
        timestamp=x.tick(),
        profile=ALICE,
        delegate_public_key=DELEGATE.upper()[2:],
        expires_at=x.now + 10_000,
    )
    granted = only(x.do(enable), e.DelegationEnabled)
    assert granted.delegate_public_key == DELEGATE
    order = c.PlaceLimitOrder(
        timestamp=x.tick(),
        profile=ALICE,
        delegate=DELEGATE,
        market_id=APT,
        trade_side=True,
        direction=False,
        size=x.sz("1"),
        price=x.px("7"),
        leverage=10,
    )
    assert only(x.do(order), e.OrderAccepted).profile == ALICE
    withdraw = c.Withdraw(timestamp=x.tick(), profile=ALICE, delegate=DELEGATE, amount=1)
    assert rejected(x.do(withdraw)) == ErrorCode.NOT_AUTHORISED
    redelegate = c.DisableDelegation(timestamp=x.tick(), profile=ALICE, delegate=DELEGATE)
    assert rejected(x.do(redelegate)) == ErrorCode.NOT_AUTHORISED
    stranger = c.Deposit(timestamp=x.tick(), profile=ALICE, delegate="0x" + "77" * 32, amount=1)
    assert rejected(x.do(stranger)) == ErrorCode.NOT_AUTHORISED
    x.tick(20_000)
    late = c.Deposit(timestamp=x.now, profile=ALICE, delegate=DELEGATE, amount=1)
    assert rejected(x.do(late)) == ErrorCode.NOT_AUTHORISED


def test_delegation_is_validated_and_can_be_disabled() -> None:
    x = Exchange()
    x.deposit(ALICE, "1")
    bad_key = c.EnableDelegation(
        timestamp=x.tick(), profile=ALICE, delegate_public_key="0x1234", expires_at=x.now + 5
    )
    assert rejected(x.do(bad_key)) == ErrorCode.INVALID_DELEGATION
    past = c.EnableDelegation(
        timestamp=x.tick(), profile=ALICE, delegate_public_key=DELEGATE, expires_at=x.now
    )
    assert rejected(x.do(past)) == ErrorCode.INVALID_DELEGATION
    disable = c.DisableDelegation(timestamp=x.tick(), profile=ALICE)
    assert rejected(x.do(disable)) == ErrorCode.INVALID_DELEGATION
    good = c.EnableDelegation(
        timestamp=x.tick(), profile=ALICE, delegate_public_key=DELEGATE, expires_at=x.now + 5
    )
    x.do(good)
    assert only(x.do(c.DisableDelegation(timestamp=x.tick(), profile=ALICE)), e.DelegationDisabled)
    use = c.Deposit(timestamp=x.tick(), profile=ALICE, delegate=DELEGATE, amount=1)
    assert rejected(x.do(use)) == ErrorCode.NOT_AUTHORISED


def test_system_accounts_take_no_user_commands() -> None:
    x = Exchange()
    for system in (INSURANCE_FUND, FEES_ACCOUNT):
        command = c.Deposit(timestamp=x.tick(), profile=system, amount=1)
        assert rejected(x.do(command)) == ErrorCode.NOT_AUTHORISED
