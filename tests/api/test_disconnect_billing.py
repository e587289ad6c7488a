"""A non-streamed request whose client goes away before the answer is ready: the work is
cancelled, and the request's record keeps the running usage its Target had reported, so the
ledger bills what was computed (the streamed case is tested through a real server in
test_tenants_api.py; here the client's departure is simulated, since a real one races a
fast tiny model)."""

from __future__ import annotations

import asyncio

import pytest

from fleetlm.api.dispatch import tap, until_disconnect
from fleetlm.api.metrics import RequestRecord
from fleetlm.openai.chunks import ChatChunk, ChatDelta, Usage, collect_chat
from fleetlm.openai.errors import ClientDisconnectedError


class GoneAfter:
    """A Request stand-in whose client disconnects once `polls` checks have passed."""

    def __init__(self, polls: int):
        self.polls = polls

    async def is_disconnected(self) -> bool:
        self.polls -= 1
        return self.polls < 0


def test_a_client_gone_before_the_answer_leaves_the_running_usage_on_the_record():
    produced, closed = [], []

    async def chunks():
        try:
            for i in range(1, 1000):
                produced.append(i)
                yield ChatChunk(served_by="m", usage=Usage(prompt_tokens=7, completion_tokens=i, cost_usd=i * 1e-6),
                                choices=[ChatDelta(0, content="x")])
                await asyncio.sleep(0.01)
        finally:
            closed.append(True)

    rec = RequestRecord("chat", "m", "", 499)

    async def run():
        with pytest.raises(ClientDisconnectedError):
            await until_disconnect(GoneAfter(polls=1), collect_chat(tap(chunks(), rec)))

    asyncio.run(run())
    assert closed == [True]  # the cancellation reached the Target's iterator
    assert rec.served_by == "m" and rec.usage is not None
    assert rec.usage.completion_tokens == produced[-1] and 5 < produced[-1] < 999  # cut short, all billed
    assert rec.usage.prompt_tokens == 7 and rec.usage.cost_usd == pytest.approx(produced[-1] * 1e-6)
