"""Per-sequence state shared by the scheduler, KV cache, model runner and output processor.

Counters, not phases: `num_computed_tokens` catches up with `num_tokens`; a sequence samples
a token in the step where they become equal. One request with `n` completions owns `n`
sequences that share its prompt (siblings)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from fleetlm.engine.sampling_params import SamplingParams


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request_id: str
    index: int  # which of the request's n completions this is
    token_ids: list[int]  # prompt followed by generated tokens
    prompt_len: int
    params: SamplingParams
    generator: torch.Generator | None = None  # per-sequence RNG when the request has a seed
    # n > 1: siblings wait until the first sequence has computed the prompt, so that they hit
    # its cached blocks instead of computing the same prompt again.
    wait_for: Sequence | None = None
    status: SeqStatus = SeqStatus.WAITING
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)  # block table, logical -> physical
    block_hashes: list[bytes] = field(default_factory=list)  # chain hashes of full blocks
    num_published_blocks: int = 0  # leading blocks already registered in the prefix cache
    num_cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache (first admission)
    prompt_computed: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that matched
    logprobs: list = field(default_factory=list)  # one entry per generated token when asked
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    num_preemptions: int = 0
    matcher: object | None = None  # GrammarMatcher when the request has a structured output
    lora: object | None = None  # lora.AdapterWeights when served by an adapter, else the base model
    lora_slot: int = 0  # the adapter's pool slot while running (0: base model, or not running)
    cache_salt: bytes = b""  # seeds the prefix-hash chain (the adapter's identity)
    # speculative decoding: tokens proposed after the last one for this step (verified by the
    # engine, then cleared), and the proposer's per-sequence state
    draft_ids: list[int] = field(default_factory=list)
    draft_state: object | None = None  # speculative.DraftState

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def finished(self) -> bool:
        return self.status is SeqStatus.FINISHED
