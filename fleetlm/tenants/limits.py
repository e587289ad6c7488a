"""Per-key limits held in memory: budget reservations, requests and tokens per minute.

Contract: `admit` either raises a 429 (`RateLimitError`, with Retry-After) or returns a
`Reservation` holding the request's worst-case cost against the key's budget, so
concurrent requests can never together pass it: with a budget that covers one request, at
most one of any number of concurrent ones is admitted. `settle` swaps the reservation for
the real cost. A key's spend is the larger of what this process has settled and what the
database says (another process may have spent too). rpm counts requests admitted in the
last 60 s; tpm counts the tokens of requests that ended in the last 60 s (a request's own
tokens count once it ends).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from fleetlm.openai.errors import RateLimitError
from fleetlm.tenants.estimate import Estimate
from fleetlm.tenants.keys import Key

WINDOW_S = 60.0


@dataclass
class Reservation:
    key_id: str
    usd: float  # what this request may spend; a stream that passes it is ended in-band
    tokens: int  # its worst-case tokens


class Limiter:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.spent: dict[str, float] = defaultdict(float)
        self.reserved: dict[str, float] = defaultdict(float)
        self.starts: dict[str, deque[float]] = defaultdict(deque)
        self.used: dict[str, deque[tuple[float, int]]] = defaultdict(deque)

    def observe(self, key: Key) -> None:
        """A fresh read of `key` from the database."""
        self.spent[key.id] = max(self.spent[key.id], key.spent_usd)

    def left_usd(self, key: Key) -> float | None:
        if key.budget_usd is None:
            return None
        return key.budget_usd - self.spent[key.id] - self.reserved[key.id]

    def admit(self, key: Key, est: Estimate) -> Reservation:
        now = self.clock()
        if key.rpm is not None:
            starts = _trim(self.starts[key.id], now)
            if len(starts) >= key.rpm:
                raise RateLimitError(f"key {key.name}: {key.rpm} requests per minute reached",
                                     retry_after_s=_retry(starts[0], now))
        if key.tpm is not None:
            used = _trim(self.used[key.id], now)
            if sum(n for _, n in used) >= key.tpm:
                raise RateLimitError(f"key {key.name}: {key.tpm} tokens per minute reached",
                                     retry_after_s=_retry(used[0][0], now))
        usd = est.usd
        left = self.left_usd(key)
        if left is not None:
            if est.composite:
                usd = min(usd, left)
            if left <= 0 or usd > left:
                spent = self.spent[key.id]
                held = self.reserved[key.id]
                raise RateLimitError(
                    f"key {key.name}: budget ${key.budget_usd:g} does not cover this request (worst case "
                    f"${est.usd:.6f}; spent ${spent:.6f}, ${held:.6f} held by requests in flight)",
                    code="insufficient_quota", retry_after_s=60 if held <= 0 else 1)
        self.reserved[key.id] += usd
        if key.rpm is not None:
            self.starts[key.id].append(now)
        return Reservation(key.id, usd, est.tokens)

    def settle(self, res: Reservation, cost_usd: float, tokens: int) -> None:
        self.reserved[res.key_id] = max(0.0, self.reserved[res.key_id] - res.usd)
        self.spent[res.key_id] += cost_usd
        now = self.clock()
        _trim(self.used[res.key_id], now).append((now, tokens))  # trimmed: bounded by a minute's requests


def _trim(window: deque, now: float) -> deque:
    while window and now - (window[0][0] if isinstance(window[0], tuple) else window[0]) >= WINDOW_S:
        window.popleft()
    return window


def _retry(oldest: float, now: float) -> int:
    return max(1, math.ceil(WINDOW_S - (now - oldest)))
