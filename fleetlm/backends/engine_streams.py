"""Engine request streams for the local backend: one or several prompts run as engine
requests, their outputs merged as they come.

Contract: leaving `merged` early (a cancelled task, a closed stream) aborts every engine
request it started.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fleetlm.engine.async_engine import AsyncLLM
from fleetlm.engine.outputs import RequestOutput
from fleetlm.engine.sampling_params import SamplingParams


async def merged(llm: AsyncLLM, prompts: list[list[int]], params: SamplingParams, rid: str, *,
                 lora_request=None) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Run one engine request per prompt (with the adapter `lora_request`, None for the base
    model); yield (prompt index, cumulative output) as they come."""
    if len(prompts) == 1:
        async for out in llm.generate(prompts[0], params, request_id=f"{rid}-0", lora_request=lora_request):
            yield 0, out
        return
    gens = [llm.generate(p, params, request_id=f"{rid}-{i}", lora_request=lora_request)
            for i, p in enumerate(prompts)]
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, gen):
        try:
            async for out in gen:
                await queue.put((i, out))
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
            await queue.put((i, exc))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        done = 0
        while done < len(tasks):
            i, item = await queue.get()
            if item is None:
                done += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
