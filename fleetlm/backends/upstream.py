"""`upstream/<name>/<model>`: chat and completions proxied to any OpenAI-compatible server
(vLLM, SGLang, llama.cpp's server, a hosted API, another fleetlm).

Contract: the request body is forwarded as validated (the `model` field renamed to the
upstream's name), streaming included; responses and stream chunks come back with the public
model id. Upstream 4xx answers pass through with their status; a connection failure, a
timeout or an upstream 5xx becomes a 502/504 in OpenAI's error shape. A client that goes
away closes the upstream stream, so the upstream can abort too. No mocks: tests run it
against a second fleetlm server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi.responses import JSONResponse, StreamingResponse

from fleetlm.openai.errors import APIError, error_body


@dataclass
class UpstreamTarget:
    model_id: str  # public id: upstream/<name>/<model>
    upstream_model: str  # the id the upstream server knows
    base_url: str  # ends with /v1
    client: httpx.AsyncClient
    api_key: str | None
    price_input_per_mtok: float
    price_output_per_mtok: float
    owned_by: str
    on_usage: object = None  # callable(model_id, prompt_tokens, completion_tokens, cost_usd)

    def card(self, created: int) -> dict:
        return {"id": self.model_id, "object": "model", "created": created, "owned_by": self.owned_by,
                "pricing": {"input_per_mtok": self.price_input_per_mtok,
                            "output_per_mtok": self.price_output_per_mtok}}

    async def chat(self, req, raw) -> JSONResponse | StreamingResponse:
        return await self._forward("/chat/completions", req)

    async def complete(self, req, raw) -> JSONResponse | StreamingResponse:
        return await self._forward("/completions", req)

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _body(self, req) -> dict:
        body = req.model_dump(exclude_none=True, by_alias=True, exclude_unset=True)
        body["model"] = self.upstream_model
        if req.stream:  # always ask for usage so cost is recorded; dropped again if unasked
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        return body

    def _record(self, usage: dict | None) -> None:
        if not usage or self.on_usage is None:
            return
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        cost = (p * self.price_input_per_mtok + c * self.price_output_per_mtok) / 1e6
        self.on_usage(self.model_id, p, c, cost)

    async def _forward(self, path: str, req):
        url = self.base_url + path
        body = self._body(req)
        try:
            if not req.stream:
                resp = await self.client.post(url, json=body, headers=self._headers())
                return self._relay_json(resp)
            request = self.client.build_request("POST", url, json=body, headers=self._headers())
            resp = await self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise APIError(504, f"upstream {self.model_id} timed out: {type(exc).__name__}",
                           code="upstream_timeout")
        except httpx.HTTPError as exc:
            raise APIError(502, f"upstream {self.model_id} unreachable: {exc}", code="upstream_error")
        if resp.status_code != 200:
            await resp.aread()
            await resp.aclose()
            return self._relay_json(resp)
        wants_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(self._relay_stream(resp, wants_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    def _relay_json(self, resp: httpx.Response) -> JSONResponse:
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code >= 500 or not isinstance(data, dict):
            raise APIError(502, f"upstream {self.model_id} answered {resp.status_code}", code="upstream_error")
        if resp.status_code == 200:
            data["model"] = self.model_id
            self._record(data.get("usage"))
        return JSONResponse(data, status_code=resp.status_code)

    async def _relay_stream(self, resp: httpx.Response, wants_usage: bool) -> AsyncIterator[str]:
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload != "[DONE]":
                    chunk = json.loads(payload)
                    if isinstance(chunk, dict):
                        if chunk.get("usage"):
                            self._record(chunk["usage"])
                            if not wants_usage:
                                if not chunk.get("choices"):
                                    continue  # the usage-only chunk we asked for ourselves
                                chunk.pop("usage")
                        if "model" in chunk:
                            chunk["model"] = self.model_id
                    payload = json.dumps(chunk, ensure_ascii=False)
                yield f"data: {payload}\n\n"
        except httpx.HTTPError as exc:  # headers are sent: report in-band
            yield f"data: {json.dumps(error_body(502, f'upstream stream failed: {exc}'))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            await resp.aclose()  # a client disconnect lands here too: the upstream sees it


def upstream_targets(cfg, client: httpx.AsyncClient, on_usage=None) -> list[UpstreamTarget]:
    """One target per model of an `UpstreamConfig`; `on_usage` records tokens and cost."""
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    return [UpstreamTarget(model_id=f"upstream/{cfg.name}/{m}", upstream_model=m,
                           base_url=cfg.base_url.rstrip("/"), client=client, api_key=key,
                           price_input_per_mtok=cfg.price_input_per_mtok,
                           price_output_per_mtok=cfg.price_output_per_mtok, owned_by=cfg.name,
                           on_usage=on_usage)
            for m in cfg.models]
