"""Wallets, deposits, withdrawals, delegation and the system accounts."""

from __future__ import annotations

import msgspec

from openperps.core import commands as c
from openperps.core import events as e
from openperps.core.engine import FEES_ACCOUNT, HOUSE_ACCOUNT, INSURANCE_FUND, Engine
from openperps.core.errors import ErrorCode
from openperps.core.invariants import conservation_gap, violations
from openperps.core.numbers import MAX_INPUT
from tests.core.harness import ALICE, APT, BOB, Exchange, only, rejected

DELEGATE = "0x" + "5e" * 32


def test_deposit_credits_free_balance() -> None:
    x = Exchange()
    event = only(x.deposit(ALICE, "12.5"), e.Deposited)
    assert event.amount == x.usd("12.5") and event.free == x.usd("12.5")
    assert only(x.deposit(ALICE, "0.5"), e.Deposited).free == x.usd("13")


def test_minting_credits_the_wallet_only() -> None:
    x = Exchange()
    assert x.wallet(ALICE) == 0
    minted = only(x.mint(ALICE, "100"), e.Minted)
    assert (minted.profile, minted.amount, minted.wallet) == (ALICE, x.usd("100"), x.usd("100"))
    assert only(x.mint(ALICE, "0.5"), e.Minted).wallet == x.usd("100.5")
    assert x.wallet(ALICE) == x.usd("100.5") and x.free(ALICE) == 0
    assert x.engine.account(ALICE) is None  # a wallet is not a trading account


def test_a_deposit_moves_money_from_the_wallet() -> None:
    x = Exchange()
    x.mint(ALICE, "100")
    event = only(x.deposit(ALICE, "30", mint=False), e.Deposited)
    assert (event.free, event.wallet) == (x.usd("30"), x.usd("70"))
    assert (x.free(ALICE), x.wallet(ALICE)) == (x.usd("30"), x.usd("70"))
    only(x.deposit(ALICE, "70", mint=False), e.Deposited)  # all of it
    assert (x.free(ALICE), x.wallet(ALICE)) == (x.usd("100"), 0)


def test_a_deposit_above_the_wallet_is_refused_and_changes_nothing() -> None:
    x = Exchange()
    never = c.Deposit(timestamp=x.tick(), profile=BOB, amount=1)
    assert rejected(x.do(never)) == ErrorCode.INSUFFICIENT_WALLET_BALANCE  # no wallet at all
    x.mint(ALICE, "10")
    x.deposit(ALICE, "4", mint=False)
    before = x.engine.snapshot_bytes()
    events = x.deposit(ALICE, "6.000001", mint=False)
    assert rejected(events) == ErrorCode.INSUFFICIENT_WALLET_BALANCE
    assert int(ErrorCode.INSUFFICIENT_WALLET_BALANCE) == 2027  # append-only numbering
    refusal = events[0]
    assert isinstance(refusal, e.Rejected)
    assert (refusal.command, refusal.profile) == ("Deposit", ALICE)
    assert refusal.detail == "not enough USDT in the wallet to deposit"
    # only the version and the clock moved
    restored = Engine.restore(before)
    restored.skip_rejection(x.engine.version, x.engine.last_timestamp)
    assert restored.snapshot_bytes() == x.engine.snapshot_bytes()
    assert (x.free(ALICE), x.wallet(ALICE)) == (x.usd("4"), x.usd("6"))


def test_a_withdrawal_returns_to_the_wallet() -> None:
    x = Exchange()
    x.deposit(ALICE, "100")
    assert x.wallet(ALICE) == 0
    event = only(x.withdraw(ALICE, "40"), e.Withdrawn)
    assert (event.free, event.wallet) == (x.usd("60"), x.usd("40"))
    assert (x.free(ALICE), x.wallet(ALICE)) == (x.usd("60"), x.usd("40"))
    # and can be deposited again
    assert only(x.deposit(ALICE, "40", mint=False), e.Deposited).wallet == 0
    assert x.free(ALICE) == x.usd("100")


def test_mint_amounts_and_addresses_are_checked() -> None:
    x = Exchange()
    for amount in (0, -5):
        command = c.Mint(timestamp=x.tick(), profile=ALICE, amount=amount)
        assert rejected(x.do(command)) == ErrorCode.INVALID_AMOUNT
    for bad in (1.5, True, MAX_INPUT + 1, "5"):
        command = c.Mint(timestamp=x.tick(), profile=ALICE, amount=bad)  # type: ignore[arg-type]
        assert rejected(x.do(command)) == ErrorCode.INVALID_NUMBER
    for address in ("0x1234", ALICE.upper(), "a1" * 33, 7):
        command = c.Mint(timestamp=x.tick(), profile=address, amount=1)  # type: ignore[arg-type]
        assert rejected(x.do(command)) == ErrorCode.INVALID_ADDRESS
    for system in (INSURANCE_FUND, FEES_ACCOUNT, HOUSE_ACCOUNT):
        command = c.Mint(timestamp=x.tick(), profile=system, amount=1)
        assert rejected(x.do(command)) == ErrorCode.NOT_AUTHORISED
    assert x.engine.wallets == {}
    assert only(x.do(c.Mint(timestamp=x.tick(), profile=ALICE, amount=MAX_INPUT)), e.Minted)


def test_wallets_count_in_conservation() -> None:
    x = Exchange()
    x.deposit(ALICE, "100")
    x.mint(BOB, "50")
    x.withdraw(ALICE, "25")
    assert conservation_gap(x.engine) == 0 and violations(x.engine) == []
    x.engine.wallets[BOB].balance += 1  # a unit from nowhere, in a wallet
    assert conservation_gap(x.engine) == -1
    found = " | ".join(violations(x.engine))
    assert "conservation" in found and f"{BOB}: wallet off by 1" in found
    x.engine.wallets[BOB].balance -= 1
    x.engine.accounts[ALICE].deposited += 1  # the books say more came out of the wallet
    assert f"{ALICE}: wallet off by 1" in " | ".join(violations(x.engine))


def test_wallets_survive_a_snapshot_and_change_the_state_hash() -> None:
    x = Exchange()
    x.deposit(ALICE, "100")
    x.mint(ALICE, "7")
    x.withdraw(ALICE, "3")
    restored = Engine.restore(x.engine.snapshot_bytes())
    assert restored.wallet(ALICE) == x.usd("10")
    assert restored.wallets[ALICE].minted == x.usd("107")
    assert restored.state_hash() == x.engine.state_hash()
    other = Exchange()
    other.deposit(ALICE, "100")
    other.withdraw(ALICE, "3")
    assert other.engine.snapshot().accounts == x.engine.snapshot().accounts
    assert other.engine.state_hash() != x.engine.state_hash()  # only the wallets differ


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
    assert x.wallet(ALICE) == 0  # nothing reached the wallet
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
        withdraw = c.Withdraw(timestamp=x.tick(), profile=system, amount=1)
        assert rejected(x.do(withdraw)) == ErrorCode.NOT_AUTHORISED


def test_events_and_snapshots_from_before_wallets_still_decode() -> None:
    old = b'{"type":"Deposited","version":3,"timestamp":9,"profile":"%s","amount":5,"free":5}'
    event = e.decode_event(old % ALICE.encode())
    assert isinstance(event, e.Deposited) and event.wallet is None and event.free == 5
    old = b'{"type":"Withdrawn","version":4,"timestamp":9,"profile":"%s","amount":5,"free":0}'
    withdrawn = e.decode_event(old % ALICE.encode())
    assert isinstance(withdrawn, e.Withdrawn) and withdrawn.wallet is None
    x = Exchange()
    x.deposit(ALICE, "1")
    snapshot = msgspec.json.decode(x.engine.snapshot_bytes())
    del snapshot["wallets"]
    restored = Engine.restore(msgspec.json.encode(snapshot))
    assert restored.wallets == {} and restored.account(ALICE) is not None
