"""Fault injection for the loopback protocol servers.

A `FaultSchedule` decides, per incoming request, whether it misbehaves:
faults queued with `push` come first, then a fixed plan keyed by the
request's index on its route, then a seeded random draw: either `rate` with
a uniform choice among `kinds`, or a `mix` giving each kind its own
probability (e.g. ``{"status": 0.10, "reset": 0.05, "malformed": 0.05,
"hang": 0.02}``).
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Iterable, Mapping

KINDS = ("status", "reset", "hang", "malformed", "truncate", "wrong_batch", "slow")


@dataclass(frozen=True)
class Fault:
    """One misbehaviour.

    kind: "status" (answer `status` with the protocol's error body),
    "reset" (drop the connection with RST), "hang" (never answer),
    "malformed" (200 with a body that is not JSON), "truncate" (200 with the
    body cut short), "wrong_batch" (a batch answer missing its last result),
    "slow" (a correct answer after `delay` seconds).
    """

    kind: str
    status: int = 500
    delay: float = 0.0
    retry_after: float | None = None
    route: str = "/generate"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {KINDS}")


class FaultSchedule:
    """Thread-safe source of faults for a server."""

    def __init__(self, plan: Mapping[int, Fault] | Iterable[tuple[int, Fault]] = (), *,
                 rate: float = 0.0, kinds: Iterable[str] = ("status",),
                 routes: Iterable[str] = ("/generate",), status: int = 500,
                 seed: int = 0, mix: Mapping[str, float] | None = None,
                 delay: float = 0.0) -> None:
        items = plan.items() if isinstance(plan, Mapping) else plan
        self._plan = {(f.route, i): f for i, f in items}
        self.rate = rate
        self.kinds = tuple(kinds)
        for kind in self.kinds:
            Fault(kind)
        self.mix = dict(mix or {})
        for kind, p in self.mix.items():
            Fault(kind)
            if p < 0:
                raise ValueError(f"mix[{kind!r}] must be >= 0")
        if sum(self.mix.values()) > 1:
            raise ValueError("mix probabilities add up to more than 1")
        self.routes = tuple(routes)
        self.status = status
        self.delay = delay  # of drawn "slow" faults
        self._rng = random.Random(seed)
        self._queued: deque[tuple[Fault, list[int]]] = deque()
        self._counts: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self.injected: list[tuple[str, int, str]] = []

    def push(self, fault: Fault, times: int = 1) -> None:
        """Apply `fault` to the next `times` requests on its route."""
        with self._lock:
            self._queued.append((fault, [times]))

    def clear(self) -> None:
        with self._lock:
            self._queued.clear()
            self._plan.clear()
            self.rate = 0.0
            self.mix = {}

    def count(self, route: str) -> int:
        """Requests seen so far on `route`."""
        with self._lock:
            return self._counts[route]

    def draw(self, route: str) -> Fault | None:
        with self._lock:
            index = self._counts[route]
            self._counts[route] = index + 1
            fault = self._take_queued(route)
            if fault is None:
                fault = self._plan.get((route, index))
            if fault is None and self.rate and route in self.routes and self._rng.random() < self.rate:
                fault = Fault(self._rng.choice(self.kinds), status=self.status, delay=self.delay,
                              route=route)
            if fault is None and self.mix and route in self.routes:
                fault = self._draw_mix(route)
            if fault is not None:
                self.injected.append((route, index, fault.kind))
            return fault

    def _draw_mix(self, route: str) -> Fault | None:
        x = self._rng.random()
        for kind, p in self.mix.items():
            if x < p:
                return Fault(kind, status=self.status, delay=self.delay, route=route)
            x -= p
        return None

    def tally(self) -> dict[str, int]:
        """Injected faults so far, by kind."""
        with self._lock:
            counts: dict[str, int] = defaultdict(int)
            for _, _, kind in self.injected:
                counts[kind] += 1
            return dict(counts)

    def _take_queued(self, route: str) -> Fault | None:
        for entry in self._queued:
            fault, left = entry
            if fault.route == route:
                left[0] -= 1
                if left[0] <= 0:
                    self._queued.remove(entry)
                return fault
        return None
