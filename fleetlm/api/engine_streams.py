"""Engine request streams for the serving layer: one or several prompts run as engine
requests, their outputs merged as they come, or collected to the end.

Contract: leaving `merged` early (a cancelled task, a closed stream) aborts every engine
request it started; `collect` also aborts when the client disconnects (checked every
DISCONNECT_POLL_S seconds) and raises a 499 APIError then.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request

from fleetlm.openai.errors import APIError
from fleetlm.engine.async_engine import AsyncLLM
from fleetlm.engine.outputs import RequestOutput
from fleetlm.engine.sampling_params import SamplingParams

DISCONNECT_POLL_S = 0.25


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


async def collect(llm: AsyncLLM, prompts: list[list[int]], params: SamplingParams, rid: str, raw: Request, *,
                  lora_request=None, stop=None) -> dict[int, RequestOutput]:
    """Run to completion; abort in the engine if the client disconnects meanwhile, or once
    `stop(output)` says the output is complete (a tool reply that repeated a call)."""
    finals: dict[int, RequestOutput] = {}

    async def run():
        stopping = False
        async for i, out in merged(llm, prompts, params, rid, lora_request=lora_request):
            finals[i] = out
            if stop is not None and not stopping and not out.finished and stop(out):
                stopping = True  # the engine ends it with finish_reason "abort"
                llm.abort(f"{rid}-{i}")

    task = asyncio.create_task(run())
    while not task.done():
        await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if not task.done() and await raw.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise APIError(499, "client disconnected")
    task.result()
    return finals
