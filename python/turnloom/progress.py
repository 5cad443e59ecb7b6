"""Progress display: a tqdm bar on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """Conversations done, turns/s, tokens/s and failures."""

    def __init__(self, total: int, *, stream: TextIO | None = None, interval_s: float = 5.0,
                 enabled: bool = True) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.enabled = enabled
        self.t0 = time.monotonic()
        self._last = self.t0
        self._bar: Any = None
        self._done = 0
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="conv", file=self.stream, dynamic_ncols=True,
                             smoothing=0.1)

    def update(self, done: int, turns: int, tokens: int, failures: int, *,
               force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.25 if self._bar is not None else self.interval_s):
            return
        self._last = now
        elapsed = max(now - self.t0, 1e-9)
        stats = f"{_rate(turns / elapsed)} turns/s, {_rate(tokens / elapsed)} tok/s, {failures} failed"
        if self._bar is not None:
            self._bar.update(done - self._done)
            self._bar.set_postfix_str(stats, refresh=False)
        else:
            print(f"turnloom: {done}/{self.total} conversations, {stats}", file=self.stream,
                  flush=True)
        self._done = done

    def close(self, done: int, turns: int, tokens: int, failures: int) -> None:
        if not self.enabled:
            return
        self.update(done, turns, tokens, failures, force=True)
        if self._bar is not None:
            self._bar.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2g}" if x >= 0.01 else "0"
