"""AsyncLLM: concurrent streams match the offline engine, a disconnect (leaving the iterator
early, or cancelling the task) aborts the request and frees its blocks, validation errors
raise in the caller, and shutdown stops the engine thread."""

from __future__ import annotations

import asyncio
import time

import pytest

from fleetlm import LLM, SamplingParams
from fleetlm.config import EngineConfig
from fleetlm.engine.async_engine import AsyncLLM, EngineDeadError
from fleetlm.engine.errors import InvalidRequestError, PromptTooLongError
from fleetlm.models.errors import ModelNotAvailableError

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)


@pytest.fixture()
def async_llm(tiny_gemma):
    """Factory of AsyncLLMs on the tiny model (EngineConfig overrides as keywords); every one
    it made is shut down after the test."""
    made: list[AsyncLLM] = []

    def make(**kw) -> AsyncLLM:
        made.append(AsyncLLM(EngineConfig(model=str(tiny_gemma), dtype="float32", **kw)))
        return made[-1]

    yield make
    for llm in made:
        llm.shutdown()


def prompts(n: int) -> list[list[int]]:
    return [[2] + [3 + (7 * i + j) % 250 for j in range(4 + 3 * i)] for i in range(n)]


async def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def all_free(llm: AsyncLLM) -> bool:
    return llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks and not llm.engine.requests


async def collect(llm: AsyncLLM, prompt, params):
    outs = [out async for out in llm.generate(prompt, params)]
    return outs


def test_concurrent_streams_match_the_offline_engine(tiny_gemma, async_llm):
    ps = prompts(8)
    expected = LLM(str(tiny_gemma), dtype="float32").generate(prompt_token_ids=ps, sampling_params=GREEDY)
    llm = async_llm()
    async def main():
        return await asyncio.gather(*(collect(llm, p, GREEDY) for p in ps))

    streams = asyncio.run(main())
    for stream, ref in zip(streams, expected):
        final = stream[-1]
        assert final.finished and not any(o.finished for o in stream[:-1])
        assert final.outputs[0].token_ids == ref.outputs[0].token_ids
        assert final.outputs[0].finish_reason == "length"
        lens = [len(o.outputs[0].token_ids) for o in stream]
        assert lens == sorted(lens) and lens[-1] == 10  # cumulative outputs
    assert all_free(llm) and llm.num_unfinished() == 0


@pytest.mark.parametrize("how", ["break", "cancel"])
def test_disconnect_aborts_and_frees_blocks(async_llm, how, monkeypatch):
    llm = async_llm(block_size=4)
    aborted = []
    real_abort = llm.engine.abort

    def spy(request_id):
        out = real_abort(request_id)
        if out is not None:
            aborted.append(out)
        return out

    monkeypatch.setattr(llm.engine, "abort", spy)
    async def main():
        seen = []
        other = asyncio.create_task(collect(llm, prompts(2)[1], GREEDY))
        if how == "break":
            async for out in llm.generate(prompts(1)[0], LONG):
                seen.append(out)
                if len(seen) == 2:
                    assert llm.engine.kv.num_free_blocks < llm.engine.kv.num_blocks
                    break
        else:
            started = asyncio.Event()

            async def consume():
                async for out in llm.generate(prompts(1)[0], LONG):
                    seen.append(out)
                    started.set()

            task = asyncio.create_task(consume())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        survivor = await other
        await wait_until(lambda: all_free(llm))
        return seen, survivor

    seen, survivor = asyncio.run(main())
    assert not seen[-1].finished and len(seen[-1].outputs[0].token_ids) < 400
    assert [a.request_id for a in aborted] == [seen[-1].request_id]  # aborted, not run to the end
    assert aborted[0].outputs[0].finish_reason == "abort" and len(aborted[0].outputs[0].token_ids) < 400
    assert survivor[-1].finished and len(survivor[-1].outputs[0].token_ids) == 10
    assert llm.num_unfinished() == 0 and not llm.engine.scheduler.running


def test_validation_errors_raise_before_anything_is_queued(async_llm):
    llm = async_llm()
    async def main():
        with pytest.raises(PromptTooLongError) as err:
            async for _ in llm.generate([2] * 600, GREEDY):
                pass
        assert (err.value.prompt_tokens, err.value.max_model_len) == (600, 512)
        with pytest.raises(InvalidRequestError):
            async for _ in llm.generate("", GREEDY):
                pass
        await asyncio.sleep(0.05)
        assert llm.num_unfinished() == 0 and all_free(llm)
        assert not llm.engine.scheduler.waiting
        return await collect(llm, prompts(1)[0], GREEDY)  # the engine still serves

    assert asyncio.run(main())[-1].finished


def test_duplicate_request_id_is_rejected(async_llm):
    llm = async_llm()
    async def main():
        first = llm.generate(prompts(1)[0], LONG, request_id="same")
        await first.__anext__()
        with pytest.raises(InvalidRequestError):
            async for _ in llm.generate(prompts(1)[0], GREEDY, request_id="same"):
                pass
        await first.aclose()
        await wait_until(lambda: all_free(llm))

    asyncio.run(main())


def test_shutdown_stops_the_engine_and_frees_everything(async_llm):
    llm = async_llm()
    async def main():
        stream = llm.generate(prompts(1)[0], LONG)
        await stream.__anext__()
        await asyncio.to_thread(llm.shutdown)
        await stream.aclose()

    asyncio.run(main())
    assert all_free(llm) and not llm.engine.scheduler.running

    async def after():
        async for _ in llm.generate(prompts(1)[0], GREEDY):
            pass

    with pytest.raises(EngineDeadError):
        asyncio.run(after())


def test_shutdown_ends_open_streams(async_llm):
    llm = async_llm()
    async def main():
        stream = llm.generate(prompts(1)[0], LONG)
        await stream.__anext__()
        await asyncio.to_thread(llm.shutdown)

        async def drain():
            last = None
            try:
                async for out in stream:
                    last = out
            except EngineDeadError:
                return "dead"
            return last

        ended = await asyncio.wait_for(drain(), timeout=3)
        assert ended == "dead" or (ended.finished and ended.outputs[0].finish_reason == "abort")

    asyncio.run(main())


def test_engine_is_built_on_its_own_thread_and_a_load_error_reaches_the_caller(tiny_gemma, tmp_path):
    """The engine thread is the one that loads the model (the first to run torch's parallel
    regions steps fastest), and a model that cannot load fails the constructor, not later."""
    import threading

    from fleetlm.engine.engine import LLMEngine

    built_on = []
    original = LLMEngine.__init__

    def spy(self, *a, **kw):
        built_on.append(threading.current_thread().name)
        original(self, *a, **kw)

    LLMEngine.__init__ = spy
    try:
        llm = AsyncLLM(EngineConfig(model=str(tiny_gemma), dtype="float32"))
    finally:
        LLMEngine.__init__ = original
    try:
        assert built_on == ["fleetlm-engine"] and llm.engine is not None
        out = asyncio.run(collect(llm, prompts(1)[0], GREEDY))[-1]
        assert out.finished and len(out.outputs[0].token_ids) == 10
    finally:
        llm.shutdown()
    with pytest.raises(ModelNotAvailableError, match="no-such-model"):
        AsyncLLM(EngineConfig(model=str(tmp_path / "no-such-model"), dtype="float32"))


def fails_alone(llm: AsyncLLM, message: str) -> None:
    """Request "bad" ends with a RequestFailedError matching `message`, while another request
    in the same batch goes on to its end, every block comes free and the engine serves on."""
    from fleetlm.engine.errors import RequestFailedError

    async def main():
        good = asyncio.ensure_future(collect(llm, prompts(2)[0], LONG))
        with pytest.raises(RequestFailedError, match=message):
            async for _ in llm.generate(prompts(2)[1], LONG, request_id="bad"):
                pass
        outs = await good
        assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == LONG.max_tokens
        await wait_until(lambda: all_free(llm))
        assert llm.stats().error is None
        assert len((await collect(llm, prompts(1)[0], GREEDY))[-1].outputs[0].token_ids) == GREEDY.max_tokens

    asyncio.run(main())


def test_the_engines_failure_on_one_request_ends_that_request_alone(async_llm, monkeypatch):
    from fleetlm.engine.engine import LLMEngine

    take = LLMEngine._take_token

    def flaky(self, seq, req, tok, lp, now):  # a bug that shows on one request's 4th token
        if req.request_id == "bad" and seq.num_output_tokens >= 3:
            raise RuntimeError("boom")
        return take(self, seq, req, tok, lp, now)

    monkeypatch.setattr(LLMEngine, "_take_token", flaky)
    fails_alone(async_llm(), "boom")


def test_a_sampling_failure_on_one_row_ends_that_request_alone(async_llm, monkeypatch):
    import fleetlm.engine.engine as engine_module

    real_sample = engine_module.sample

    def flaky(logits, seqs, gen):  # a grammar or sampler bug that shows on one request's rows
        if any(s.request_id == "bad" and s.num_output_tokens >= 2 for s in seqs):
            raise RuntimeError("mask failed")
        return real_sample(logits, seqs, gen)

    monkeypatch.setattr(engine_module, "sample", flaky)
    fails_alone(async_llm(), "mask failed")
