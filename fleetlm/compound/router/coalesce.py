"""Coalesce concurrent calls of a batch function into one call.

Why: the server ranks each routed request on its own worker thread (`asyncio.to_thread`), and
every rank embeds one short prompt window. One at a time, N concurrent requests wait for N
forwards behind the embedder's lock; a forward over all N windows at once costs far less than
N forwards (the matmuls run nearer the CPU's peak, and the per-layer fixed costs are paid once).

Contract: ``Coalescer(fn)`` wraps ``fn(items: list) -> list`` (one result per item, in order).
``coalescer(items)`` returns ``fn(items)``'s results for the caller's items, but while one
call of ``fn`` runs, callers that arrive queue up, and the next of them runs ``fn`` once over
everything queued (the "leader"; no extra thread). A caller alone runs ``fn`` at once, so
there is no added wait when there is no concurrency. If ``fn`` raises, every caller whose
items were in that batch gets the exception. ``fn`` never runs twice at the same time.
``calls`` and ``items`` count the ``fn`` calls made and the items passed (for tests and
metrics).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class _Slot:
    items: list
    done: bool = False
    result: list = field(default_factory=list)
    error: BaseException | None = None


class Coalescer:
    def __init__(self, fn):
        self._fn = fn
        self._cv = threading.Condition()
        self._queue: list[_Slot] = []
        self._busy = False
        self.calls = 0
        self.items = 0

    def __call__(self, items: list) -> list:
        slot = _Slot(list(items))
        with self._cv:
            self._queue.append(slot)
            while not slot.done and self._busy:
                self._cv.wait()
            if slot.done:  # an earlier leader ran our items
                return self._result(slot)
            batch, self._queue, self._busy = self._queue, [], True  # we lead: take the queue
        try:
            self._run(batch)
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
        return self._result(slot)

    def _run(self, batch: list[_Slot]) -> None:
        flat = [item for s in batch for item in s.items]
        try:
            out = list(self._fn(flat))
            if len(out) != len(flat):
                raise RuntimeError(f"batch function returned {len(out)} results for {len(flat)} items")
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            for s in batch:
                s.error, s.done = exc, True
            return
        self.calls += 1
        self.items += len(flat)
        start = 0
        for s in batch:
            s.result, s.done = out[start:start + len(s.items)], True
            start += len(s.items)

    @staticmethod
    def _result(slot: _Slot) -> list:
        if slot.error is not None:
            raise slot.error
        return slot.result
