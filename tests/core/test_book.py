"""The book on its own: levels, priority and removal."""

from __future__ import annotations

from openperps.core.book import Book, Order


def order(order_id: int, is_buy: bool, price: int, size: int = 10) -> Order:
    return Order(order_id, "p", 1, is_buy, False, 1, price, size, 1, 0, 0)


def test_levels_iterate_best_first_and_aggregate() -> None:
    book = Book()
    for i, (is_buy, price) in enumerate(
        [(True, 99), (True, 101), (True, 100), (False, 105), (False, 103), (False, 103)]
    ):
        book.add(order(i + 1, is_buy, price))
    assert book.best_bid() == 101 and book.best_ask() == 103
    assert book.depth(True) == [(101, 10), (100, 10), (99, 10)]
    assert book.depth(False) == [(103, 20), (105, 10)]
    price, level = book.best_level(False) or (0, {})
    assert price == 103 and list(level) == [5, 6]
    assert not book.is_crossed()


def test_removing_from_the_middle_and_the_best_level() -> None:
    book = Book()
    orders = [order(1, True, 100), order(2, True, 90), order(3, True, 95), order(4, False, 110)]
    for o in orders:
        book.add(o)
    book.remove(orders[2])  # a level that is not the best
    book.remove(orders[0])  # the best level
    assert book.depth(True) == [(90, 10)]
    book.remove(orders[3])
    assert book.best_ask() is None and book.best_level(False) is None
    book.remove(orders[1])
    assert book.best_bid() is None and book.best_level(True) is None and book.orders == {}


def test_removing_a_non_best_ask_level() -> None:
    book = Book()
    a, b = order(1, False, 110), order(2, False, 120)
    book.add(a)
    book.add(b)
    book.remove(b)
    assert book.depth(False) == [(110, 10)]
    book.add(order(3, True, 115))
    assert book.is_crossed()
