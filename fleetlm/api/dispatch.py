"""The one place where a Target's chunks meet HTTP.

Contract, for every chat and completion request whatever Target serves it:
- **admission**: a request that may reach a local engine (`Target.engines()`) is admitted
  only while fewer than `max_pending` such requests are in flight on that engine, else 429
  with Retry-After; it holds its place until its answer is fully sent or it fails;
- **JSON or SSE**: a non-streamed request gets the chunks added up (`collect_*`) as one JSON
  body; a streamed one gets one SSE event per chunk (`sse_events`, the server's only SSE
  writer), then the usage chunk if `stream_options.include_usage`, then `[DONE]`. Headers
  are sent only after the first chunk, so an error before it is a real HTTP error (a router
  has already fallen back by then); an error after it goes in-band, as OpenAI does. Every
  answer names the model that served in `x-fleetlm-served-by`;
- **keys, budgets, the ledger**: with tenants configured, a tenant key's allowlist, rate
  limits and budget are checked before admission, with the request's worst-case cost
  reserved (`fleetlm.tenants`); a stream whose running cost passes its reservation is ended
  in-band. The request is recorded once when it ends, whatever its status: Prometheus
  (`Metrics.record`) and the database ledger (`Tenants.settle`: model asked, model served,
  usage, cost, latency, status, a program's sub-calls); a request the key's limits or the
  admission gate refuse too, with no tokens (a batch line, retried, only by its outcome). A
  stream cut short is billed for the tokens it had sent, and a non-streamed request whose
  client went away for the tokens computed by then (Targets put a running `usage` on their
  chunks);
- **disconnects**: the request's work runs as a task that is cancelled when the client goes
  away (polled while nothing is sent yet; Starlette cancels a stream's writer), and closing
  a Target's iterator aborts everything it started: engine rows, upstream streams, a
  program's sub-calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from fleetlm.api.metrics import Metrics, RequestRecord
from fleetlm.catalog import Catalog
from fleetlm.openai import format as fmt
from fleetlm.openai.chunks import ChatChunk, Usage, collect_chat, collect_completion
from fleetlm.openai.errors import APIError, ClientDisconnectedError, RateLimitError, UnavailableError, error_body
from fleetlm.tenants.ledger import LedgerRow

log = logging.getLogger("fleetlm.api")

DISCONNECT_POLL_S = 0.25
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Admission:
    """In-flight requests per local engine, each engine's bounded by `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight: Counter[str] = Counter()

    def enter(self, engines: frozenset[str]) -> None:
        if any(self.in_flight[e] >= self.limit for e in engines):
            raise RateLimitError("server is at capacity; retry shortly")
        for e in engines:
            self.in_flight[e] += 1

    def leave(self, engines: frozenset[str]) -> None:
        for e in engines:
            self.in_flight[e] -= 1

    @property
    def total(self) -> int:
        return sum(self.in_flight.values())


class Dispatch:
    def __init__(self, catalog: Catalog, metrics: Metrics, *, max_pending: int, tenants=None):
        self.catalog, self.metrics, self.tenants = catalog, metrics, tenants  # tenants: fleetlm.tenants.gate.Tenants
        self.admission = Admission(max_pending)
        self.interactive = 0  # HTTP requests in flight (batch lines wait behind them)

    async def chat(self, req, raw: Request) -> Response:
        return await self._serve("chat", req, raw)

    async def complete(self, req, raw: Request) -> Response:
        return await self._serve("completions", req, raw)

    async def _serve(self, endpoint: str, req, raw: Request) -> Response:
        target = self.catalog.resolve(req.model)
        engines = target.engines()
        caller = getattr(raw.state, "caller", None)
        t0 = time.monotonic()
        chat = endpoint == "chat"
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        held = self._admit(caller, endpoint, req, target, engines, rid=rid, t0=t0)
        chunks = target.chat(req) if chat else target.complete(req)
        rec = RequestRecord(endpoint, req.model, "", 499)
        self.interactive += 1

        def end():
            self.interactive -= 1
            self._end(rec, engines, t0, rid=rid, caller=caller, held=held)

        streaming = False
        try:
            if not req.stream:
                seen = tap(chunks, rec)  # a client gone before the answer is billed for what was computed
                try:
                    result = await until_disconnect(raw, collect_chat(seen) if chat else collect_completion(seen))
                except ClientDisconnectedError:
                    raise  # billed for the running usage `tap` kept
                except Exception:
                    rec.usage = Usage()  # a failed answer reached nobody: not billed
                    raise
                rec.served_by, rec.usage, rec.timing, rec.calls = (result.served_by, result.usage, result.timing,
                                                                   result.calls)
                rec.status = 200
                body = fmt.chat_completion(result, rid) if chat else fmt.text_completion(result, rid)
                return JSONResponse(body, headers={"x-fleetlm-served-by": result.served_by})
            try:
                first = await until_disconnect(raw, anext(chunks))
            except StopAsyncIteration:
                raise UnavailableError(f"{req.model} gave no answer") from None
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = sse_events(first, chunks, rid=rid, include_usage=include_usage, record=rec,
                                limit_usd=held.usd if held is not None else None)

            async def close():
                await events.aclose()  # closes `chunks` too, if the stream ever started
                await chunks.aclose()
                end()

            streaming = True
            return StreamingAnswer(events, close, media_type="text/event-stream",
                                   headers={**SSE_HEADERS, "x-fleetlm-served-by": first.served_by})
        except APIError as exc:
            rec.status = exc.status
            raise
        except Exception:
            rec.status = 500
            raise
        finally:
            if not streaming:
                await chunks.aclose()
                end()

    async def answer(self, caller, endpoint: str, req, *, batch_id: str | None = None, discount: float = 0.0,
                     priority: int = 0) -> tuple[int, dict]:
        """One non-streamed request on behalf of `caller` (a batch line), through the same
        checks, admission and ledger as an HTTP request: (status, the JSON body). Its cost is
        billed at (1 - `discount`); `priority` > 0 runs it as background on the local engine."""
        req._priority = priority
        chat = endpoint == "chat"
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        rec = RequestRecord(endpoint, req.model, "", 499)
        t0, engines, held, entered = time.monotonic(), frozenset(), None, False
        try:
            target = self.catalog.resolve(req.model)
            engines = target.engines()
            # refusals are not recorded here: the runner retries a line the server has no room for
            held = self._admit(caller, endpoint, req, target, engines, rid=rid, t0=t0, record_refusal=False)
            entered = True
            chunks = target.chat(req) if chat else target.complete(req)
            try:
                result = await (collect_chat(chunks) if chat else collect_completion(chunks))
            finally:
                await chunks.aclose()
            rec.served_by, rec.usage, rec.timing = result.served_by, result.usage, result.timing
            rec.calls, rec.status = result.calls, 200
            return 200, fmt.chat_completion(result, rid) if chat else fmt.text_completion(result, rid)
        except APIError as exc:
            rec.status = exc.status
            return exc.status, exc.body()
        except Exception as exc:  # noqa: BLE001 - a bug below: this line fails, the batch goes on
            log.exception("batch request failed")
            rec.status = 500
            return 500, error_body(500, f"internal error: {type(exc).__name__}")
        finally:
            if entered:
                self._end(rec, engines, t0, rid=rid, caller=caller, held=held, batch_id=batch_id, discount=discount)

    def _admit(self, caller, endpoint: str, req, target, engines, *, rid: str, t0: float,
               record_refusal: bool = True):
        """The tenant checks (the key's models and limits: a cost reservation, returned) and
        then the admission gate. A refusal releases the reservation and is raised; with
        `record_refusal` it is recorded like any request that ends (metrics, and a ledger row
        with its status and no tokens)."""
        held = None
        try:
            held = self.tenants.admit(caller, req.model, req, target, self.catalog) if self.tenants and caller else None
            self.admission.enter(engines)
        except APIError as exc:
            if record_refusal:
                self._record(RequestRecord(endpoint, req.model, "", exc.status), t0, rid=rid, caller=caller,
                             held=held, admitted=False)
            elif held is not None:
                self.tenants.limiter.settle(held, 0.0, 0)
            raise
        return held

    def _end(self, rec: RequestRecord, engines, t0: float, *, rid: str, caller, held, batch_id: str | None = None,
             discount: float = 0.0) -> None:
        self.admission.leave(engines)
        self._record(rec, t0, rid=rid, caller=caller, held=held, batch_id=batch_id, discount=discount)

    def _record(self, rec: RequestRecord, t0: float, *, rid: str, caller, held, batch_id: str | None = None,
                discount: float = 0.0, admitted: bool = True) -> None:
        rec.latency_s = time.monotonic() - t0
        self.metrics.record(rec, admitted=admitted)
        if self.tenants is not None:
            u = rec.usage
            row = LedgerRow(rid, time.time(), caller.key_id if caller else None, rec.endpoint, rec.model, rec.served_by,
                            u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cost_usd * (1 - discount),
                            rec.latency_s, rec.status, batch_id=batch_id)
            self.tenants.settle(held, row, rec.calls)


class StreamingAnswer(StreamingResponse):
    """A StreamingResponse that runs `close()` once the response is over, however it ends:
    finished, failed, or cancelled by a disconnect, even before its first byte (when
    Starlette never starts the body iterator, whose own cleanup would then never run)."""

    def __init__(self, content, close, **kw):
        super().__init__(content, **kw)
        self._close = close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close()


async def tap(chunks: AsyncIterator, rec: RequestRecord) -> AsyncIterator:
    """`chunks` as they are, keeping the running usage and the model serving them on `rec`."""
    async for chunk in chunks:
        rec.served_by = chunk.served_by or rec.served_by
        if chunk.usage is not None:
            rec.usage = chunk.usage
        yield chunk


async def until_disconnect(raw: Request, work: Awaitable):
    """Await `work` as a task, cancelling it (and raising a 499) if the client goes away first."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await raw.is_disconnected():
                raise ClientDisconnectedError()
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def sse_events(first, chunks: AsyncIterator, *, rid: str, include_usage: bool,
                     record: RequestRecord | None = None, limit_usd: float | None = None) -> AsyncIterator[str]:
    """A Target's stream as SSE events, starting from its already-awaited `first` chunk; the
    iterator is closed at the end, however it ends. `record` (if given) is filled in: who
    served, usage (running, so a stream cut short is billed for what it sent), timing,
    sub-calls, and the status (200, an in-band error's, or 499). A stream whose running cost
    passes `limit_usd` is ended with an in-band 429 `insufficient_quota`."""
    kind = "chat.completion.chunk" if isinstance(first, ChatChunk) else "text_completion"
    created = int(time.time())
    served_by, usage = first.served_by, Usage()
    rec = record or RequestRecord("", "", "", 499)
    chunk = first
    try:
        while True:
            served_by = chunk.served_by or served_by
            usage = chunk.usage or usage
            rec.served_by, rec.usage = served_by, usage
            rec.timing, rec.calls = chunk.timing or rec.timing, rec.calls + chunk.calls
            if chunk.choices or chunk.extra:
                yield _sse(fmt.stream_chunk(chunk, rid, created))
            if limit_usd is not None and usage.cost_usd > limit_usd * (1 + 1e-9):
                raise RateLimitError(f"the key's budget ran out after ${usage.cost_usd:.6f} of this answer",
                                     code="insufficient_quota")
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
        if include_usage:
            yield _sse(fmt.usage_chunk(kind, rid, served_by, usage, created))
        rec.status = 200
    except APIError as exc:  # headers are sent: report in-band, as OpenAI does
        rec.status = exc.status
        yield _sse(exc.body())
    except Exception as exc:  # noqa: BLE001 - a bug below; the client still gets a clean end
        log.exception("stream failed")
        rec.status = 500
        yield _sse(error_body(500, f"generation failed: {exc}"))
    finally:
        await chunks.aclose()
    yield "data: [DONE]\n\n"


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
