"""Benchmark item order: each item once by index, or seeded draws with replacement."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from turnloom.items import ITEM_ORDERS, check_order, item_index
from turnloom.seeds import conversation_seed


def test_by_index_plays_every_item_once_per_pass():
    # 24 conversations over 24 rules: every rule exactly once, in order.
    played = [item_index(24, i, conversation_seed(7, i)) for i in range(24)]
    assert played == list(range(24))


def test_by_index_wraps_around_for_trials():
    # 3 passes over 5 items: each item 3 times, item i at conversations i, i+5, i+10.
    played = [item_index(5, i, conversation_seed(0, i), "by-index") for i in range(15)]
    assert played == [0, 1, 2, 3, 4] * 3
    assert Counter(played) == {k: 3 for k in range(5)}


def test_by_index_ignores_the_seed():
    assert {item_index(10, 3, s) for s in range(50)} == {3}


def test_random_draws_with_replacement_from_the_seed():
    seeds = [conversation_seed(1, i) for i in range(500)]
    played = [item_index(500, i, s, "random") for i, s in enumerate(seeds)]
    # Same draw as a seeded Random would make, and stable across calls.
    assert played == [random.Random(s).randrange(500) for s in seeds]
    # With replacement: far fewer than 500 distinct sessions (about 1 - 1/e of them).
    assert 250 < len(set(played)) < 380


def test_check_order_names_the_place():
    assert check_order("by-index", "x") == "by-index"
    assert set(ITEM_ORDERS) == {"by-index", "random"}
    with pytest.raises(ValueError, match=r"settings\.order.*'shuffled'"):
        check_order("shuffled", "settings.order")


@pytest.mark.parametrize("n, i, order", [(0, 0, "by-index"), (3, -1, "by-index"),
                                         (3, 0, "sequential"), (True, 0, "by-index")])
def test_bad_arguments_are_refused(n, i, order):
    with pytest.raises(ValueError, match="item_index"):
        item_index(n, i, 0, order)
