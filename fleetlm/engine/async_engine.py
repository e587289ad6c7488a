"""`AsyncLLM`: the engine core on a background thread, with an asyncio front for servers.

Contract: `generate(prompt, params)` validates in the caller (typed errors raise before
anything is queued), then yields cumulative `RequestOutput`s until the request finishes.
Leaving the iterator early (a client disconnect, a cancelled task) aborts the request in the
engine, which frees its KV blocks at the next step boundary. All engine state is touched by
the engine thread only; other threads talk to it through a command queue. Torch releases the
GIL in its kernels, so the event loop stays responsive while a step runs.

The engine is built on the engine thread too (the constructor waits for it and re-raises a
load error): torch's OpenMP parallel regions were measured to run slower on a thread other
than the one that first used them (observed, not fully explained). gemma-3-270m on 2 AVX2 cores,
8 streams, two runs of three rounds: 45-58 output tok/s when the model was loaded on the main
thread and stepped here, 58-66 when loaded here (`benchmarks/engine_thread.py`).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fleetlm.config import EngineConfig
from fleetlm.engine.engine import LLMEngine
from fleetlm.engine.errors import InvalidRequestError, RequestFailedError
from fleetlm.engine.outputs import RequestOutput
from fleetlm.engine.sampling_params import SamplingParams


class EngineDeadError(RuntimeError):
    """The engine thread stopped (shut down, or a step raised); nothing more is served."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine for servers and metrics (plain reads; safe across threads)."""

    waiting: int  # sequences waiting for admission
    running: int  # sequences in the running batch
    streams: int  # requests with an open output stream (generate() callers)
    kv_usage: float  # fraction of KV-cache blocks in use
    prefix_hit_ratio: float  # prompt tokens served from the prefix cache, of those looked up
    error: str | None  # why the engine stopped; None while it serves


class AsyncLLM:
    def __init__(self, config: EngineConfig | None = None, *, engine: LLMEngine | None = None):
        """Starts the engine thread, which builds the engine from ``config`` (unless an
        ``engine`` is given) before it serves; returns once it is built, raising its error."""
        self.engine = engine
        self._config = config or EngineConfig()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()  # guards _streams
        self._stopped = threading.Event()
        self._built = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fleetlm-engine", daemon=True)
        self._thread.start()
        self._built.wait()
        if self.engine is None:  # the build failed; the thread has ended
            raise self.error

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None, *,
                       request_id: str | None = None, lora_request=None) -> AsyncIterator[RequestOutput]:
        if self._stopped.is_set():
            raise EngineDeadError("the engine is not running") from self.error
        req = self.engine.make_request(prompt, params, request_id=request_id, lora_request=lora_request)
        rid = req.request_id
        stream: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if rid in self._streams:
                raise InvalidRequestError(f"duplicate request id {rid!r}", param="request_id")
            self._streams[rid] = (asyncio.get_running_loop(), stream)
        self._commands.put(("add", req))
        finished = False
        try:
            while not finished:
                out = await stream.get()
                if isinstance(out, (InvalidRequestError, RequestFailedError)):
                    raise out  # this request's end; the engine serves on
                if isinstance(out, BaseException):
                    raise EngineDeadError(f"engine failed: {out}") from out
                finished = out.finished
                yield out
        finally:
            with self._lock:
                self._streams.pop(rid, None)
            if not finished:
                self._commands.put(("abort", rid))

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def num_unfinished(self) -> int:
        with self._lock:
            return len(self._streams)

    def stats(self) -> EngineStats:
        e = self.engine
        return EngineStats(waiting=len(e.scheduler.waiting), running=len(e.scheduler.running),
                           streams=self.num_unfinished(), kv_usage=e.kv.usage,
                           prefix_hit_ratio=e.kv.hits / e.kv.queries if e.kv.queries else 0.0,
                           error=None if self.error is None and not self._stopped.is_set() else
                           str(self.error or "stopped"))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort whatever is still running and stop the engine thread."""
        self._commands.put(("stop", None))
        self._thread.join(timeout)

    # ---- engine thread -------------------------------------------------------------------
    def _deliver(self, out: RequestOutput | BaseException, rid: str) -> None:
        with self._lock:
            target = self._streams.get(rid)
        if target is not None:
            loop, stream = target
            try:
                loop.call_soon_threadsafe(stream.put_nowait, out)
            except RuntimeError:  # the caller's loop is closed: nobody is listening
                pass

    def _handle(self, cmd: str, arg) -> bool:
        if cmd == "add":
            try:
                self.engine.add(arg)
            except Exception as exc:  # e.g. a duplicate id: fail this request only
                self._deliver(exc, arg.request_id)
        elif cmd == "abort":
            out = self.engine.abort(arg)
            if out is not None:
                self._deliver(out, arg)
        elif cmd == "stop":
            return False
        return True

    def _run(self) -> None:
        try:
            if self.engine is None:
                self.engine = LLMEngine(self._config)
        except BaseException as exc:
            self.error = exc
            self._stopped.set()
            return
        finally:
            self._built.set()
        try:
            while True:
                block = not self.engine.has_unfinished_requests()
                try:
                    while True:  # drain commands; wait for one only when idle
                        cmd, arg = self._commands.get(block=block, timeout=None if block else 0)
                        if not self._handle(cmd, arg):
                            return
                        block = False
                except queue.Empty:
                    pass
                for out in self.engine.step():
                    self._deliver(out, out.request_id)
                while self.engine.failed:  # ended on its own; the engine goes on
                    rid, exc = self.engine.failed.pop()
                    self._deliver(exc, rid)
        except BaseException as exc:  # a step failed: fail every waiting stream, stop serving
            self.error = exc
            with self._lock:
                rids = list(self._streams)
            for rid in rids:
                self._deliver(exc, rid)
        finally:
            self._stopped.set()
            for rid in list(self.engine.requests):  # shutdown: end every open stream, now
                out = self.engine.abort(rid)
                if out is not None:
                    self._deliver(out, rid)
