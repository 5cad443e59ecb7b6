"""Which benchmark item a conversation plays.

A benchmark (WILT's rules, SysBench's sessions, a card deck) is a list of
items. ``item_index`` maps a conversation to one of them:

- ``"by-index"`` (the default for benchmark runs): conversation ``i`` plays
  item ``i mod n``. A run of ``n`` conversations plays every item exactly once,
  as the benchmarks' authors play them; ``k * n`` conversations play every item
  ``k`` times (k trials, item 0..n-1 then again from item 0), and a run of
  fewer than ``n`` conversations plays the first items only.
- ``"random"``: a seeded draw with replacement from the conversation's seed
  (some items repeat, others are skipped; useful for open-ended sampling).

Either way the answer depends only on the conversation's index and seed, so a
resumed or sharded run (indices are global across shards) plays the same item,
and every branch of a conversation (branches share the index and the seed)
plays the same item as its trunk.
"""

from __future__ import annotations

import random
from typing import Literal

ItemOrder = Literal["by-index", "random"]
ITEM_ORDERS: tuple[ItemOrder, ...] = ("by-index", "random")


def check_order(order: object, where: str) -> ItemOrder:
    """`order` as an item order, or a ValueError naming `where`."""
    if order not in ITEM_ORDERS:
        raise ValueError(f"{where}: item order must be one of {', '.join(map(repr, ITEM_ORDERS))}, "
                         f"not {order!r}")
    return order  # type: ignore[return-value]


def item_index(n_items: int, conversation_index: int, seed: int,
               order: ItemOrder = "by-index") -> int:
    """The index (0..n_items-1) of the item conversation `conversation_index`
    (with conversation seed `seed`) plays under `order`."""
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"item_index: n_items must be a positive integer, not {n_items!r}")
    if isinstance(conversation_index, bool) or not isinstance(conversation_index, int) \
            or conversation_index < 0:
        raise ValueError("item_index: conversation_index must be a non-negative integer, "
                         f"not {conversation_index!r}")
    if order == "by-index":
        return conversation_index % n_items
    if order == "random":
        return random.Random(seed).randrange(n_items)
    raise ValueError(f"item_index: order must be one of {', '.join(map(repr, ITEM_ORDERS))}, "
                     f"not {order!r}")
