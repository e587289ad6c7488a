"""`upstream/<name>/<model>`: chat and completions on any OpenAI-compatible server (vLLM,
SGLang, llama.cpp's server, a hosted API, another fleetlm).

Contract: the request is forwarded as validated (its `model` renamed to the upstream's name;
a stream always asks for usage, so cost is known), and the answer comes back as typed chunks
served by the public model id, usage priced at the upstream's configured prices. An upstream
4xx is raised with its status and message; a connection failure, a timeout, an upstream 5xx
or a stream that breaks becomes a 502/504 `APIError`. The whole answer, streamed or not,
ends within `max_stream_s` of the request (httpx's timeouts bound each wait, not the total:
an upstream that trickles forever would hold the request forever); past it, a 504. Closing
the iterator (a client that went away) closes the upstream stream, so the upstream can abort
too. No mocks: tests run it
against a second fleetlm server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from fleetlm.config import UpstreamConfig
from fleetlm.openai import format as fmt
from fleetlm.openai.chunks import ChatChunk, CompletionChunk, ModelCard, Pricing, Usage
from fleetlm.openai.errors import APIError, UnavailableError, UpstreamTimeoutError


@dataclass
class UpstreamTarget:
    model_id: str  # public id: upstream/<name>/<model>
    upstream_model: str  # the id the upstream server knows
    base_url: str  # ends with /v1
    client: httpx.AsyncClient
    api_key: str | None
    pricing: Pricing
    owned_by: str
    max_stream_s: float = 600.0  # the whole answer, from request to last byte

    def card(self) -> ModelCard:
        return ModelCard(self.model_id, owned_by=self.owned_by, pricing=self.pricing)

    def engines(self) -> frozenset[str]:
        return frozenset()

    def chat(self, req) -> AsyncIterator[ChatChunk]:
        return self._forward("/chat/completions", req, ChatChunk, fmt.parse_chat_choice)

    def complete(self, req) -> AsyncIterator[CompletionChunk]:
        return self._forward("/completions", req, CompletionChunk, fmt.parse_completion_choice)

    def _body(self, req) -> dict:
        body = req.model_dump(exclude_none=True, by_alias=True, exclude_unset=True)
        body["model"] = self.upstream_model
        if req.stream:
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        return body

    async def _forward(self, path: str, req, chunk_cls, parse_choice):
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        request = self.client.build_request("POST", self.base_url + path, json=self._body(req), headers=headers)
        deadline = asyncio.get_running_loop().time() + self.max_stream_s
        try:
            resp = await self._before(deadline, self.client.send(request, stream=True))
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"upstream {self.model_id} timed out: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise UnavailableError(f"upstream {self.model_id} unreachable: {exc}") from None
        try:
            if resp.status_code != 200 or not req.stream:
                yield self._whole(await self._before(deadline, self._json(resp)), chunk_cls, parse_choice)
                return
            usage = None
            async for data in _sse_data(resp, self.model_id, lambda work: self._before(deadline, work)):
                if data.get("usage"):
                    usage = fmt.parse_usage(data["usage"], self.pricing)
                if data.get("choices"):
                    yield chunk_cls(served_by=self.model_id, choices=[parse_choice(c) for c in data["choices"]],
                                    extra=_extra(data))
            yield chunk_cls(served_by=self.model_id, usage=usage or Usage())
        finally:
            await resp.aclose()  # a client disconnect lands here too: the upstream sees it

    async def _before(self, deadline: float, work):
        """Await `work`; past `deadline` (event-loop time) it is cancelled and this is a 504."""
        try:
            async with asyncio.timeout_at(deadline):  # no task per call: this runs once per SSE line
                return await work
        except TimeoutError:
            raise UpstreamTimeoutError(f"upstream {self.model_id} did not finish its answer within "
                                       f"max_stream_s = {self.max_stream_s:g} s") from None

    async def _json(self, resp: httpx.Response) -> dict:
        try:
            await resp.aread()
            data = resp.json()
        except (ValueError, httpx.HTTPError):
            data = None
        if resp.status_code >= 500 or not isinstance(data, dict):
            raise UnavailableError(f"upstream {self.model_id} answered {resp.status_code}")
        if resp.status_code != 200:
            err = data.get("error") if isinstance(data.get("error"), dict) else {}
            raise APIError(resp.status_code, str(err.get("message") or f"upstream answered {resp.status_code}"),
                           param=err.get("param"), code=err.get("code"))
        return data

    def _whole(self, data: dict, chunk_cls, parse_choice):
        return chunk_cls(served_by=self.model_id, choices=[parse_choice(c) for c in data.get("choices") or []],
                         usage=fmt.parse_usage(data.get("usage") or {}, self.pricing), extra=_extra(data))


async def _sse_data(resp: httpx.Response, model_id: str, bounded) -> AsyncIterator[dict]:
    """The JSON events of an SSE stream up to `[DONE]`; an in-band error is raised. Each line
    is awaited through `bounded` (the answer's deadline)."""
    lines = resp.aiter_lines()
    try:
        while (line := await bounded(anext(lines, None))) is not None:
            if not line.startswith("data: "):
                continue
            if line[6:] == "[DONE]":
                return
            data = json.loads(line[6:])
            if not isinstance(data, dict):
                continue
            if isinstance(data.get("error"), dict):
                raise UnavailableError(f"upstream {model_id} failed mid-stream: {data['error'].get('message')}")
            yield data
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        raise UnavailableError(f"upstream stream failed: {exc}") from None


def _extra(data: dict) -> dict | None:
    extra = {k: v for k, v in data.items() if k not in fmt.STANDARD_FIELDS}
    return extra or None


def upstream_targets(cfg: UpstreamConfig, client: httpx.AsyncClient) -> list[UpstreamTarget]:
    """One Target per model of an upstream."""
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    pricing = Pricing(cfg.price_input_per_mtok, cfg.price_output_per_mtok)
    return [UpstreamTarget(model_id=f"upstream/{cfg.name}/{m}", upstream_model=m, base_url=cfg.base_url.rstrip("/"),
                           client=client, api_key=key, pricing=pricing, owned_by=cfg.name,
                           max_stream_s=cfg.max_stream_s)
            for m in cfg.models]
