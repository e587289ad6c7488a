"""`LLM`: the offline, vLLM-shaped entry point. `LLM(model).generate(prompts, params)`."""

from __future__ import annotations

from collections.abc import Sequence as Seq

from fleetlm.config import EngineConfig
from fleetlm.engine.engine import LLMEngine
from fleetlm.engine.outputs import RequestOutput
from fleetlm.engine.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str = "gemma-3-270m", **engine_kwargs):
        """engine_kwargs are EngineConfig fields (dtype, max_num_seqs, num_kv_blocks, ...)."""
        self.engine = LLMEngine(EngineConfig.from_dict({"model": model, **engine_kwargs}))
        self.tokenizer = self.engine.tokenizer

    def generate(
        self,
        prompts: str | Seq[str] | None = None,
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        *,
        prompt_token_ids: Seq[Seq[int]] | None = None,
        lora_request=None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion, continuously batched; outputs in input order.
        All prompts are validated before any is queued. lora_request: one `LoRARequest` for
        every prompt, a list (one per prompt, None = base model), or None."""
        if (prompts is None) == (prompt_token_ids is None):
            raise ValueError("pass exactly one of prompts or prompt_token_ids")
        items = [prompts] if isinstance(prompts, str) else list(prompts if prompts is not None else prompt_token_ids)
        if isinstance(sampling_params, SamplingParams) or sampling_params is None:
            params = [sampling_params or SamplingParams()] * len(items)
        else:
            params = list(sampling_params)
            if len(params) != len(items):
                raise ValueError(f"{len(params)} sampling params for {len(items)} prompts")
        loras = list(lora_request) if isinstance(lora_request, (list, tuple)) else [lora_request] * len(items)
        if len(loras) != len(items):
            raise ValueError(f"{len(loras)} lora requests for {len(items)} prompts")
        reqs = [self.engine.make_request(x, p, lora_request=lo) for x, p, lo in zip(items, params, loras)]
        for r in reqs:
            self.engine.add(r)
        done: dict[str, RequestOutput] = {}
        while len(done) < len(reqs):
            for out in self.engine.step():
                if out.finished:
                    done[out.request_id] = out
            if self.engine.failed:  # the engine's own failure on a request: the others are aborted
                rid, exc = self.engine.failed.pop()
                for r in reqs:
                    self.engine.abort(r.request_id)
                raise exc
        return [done[r.request_id] for r in reqs]
