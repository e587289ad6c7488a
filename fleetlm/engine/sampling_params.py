"""`SamplingParams`: how one request is decoded, validated at construction (vLLM's shape)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetlm.config import ConfigKeyError, from_dict
from fleetlm.engine.errors import InvalidRequestError


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1  # completions per prompt; they share the prompt's KV blocks
    max_tokens: int | None = 16  # None: until the context is full
    temperature: float = 1.0  # 0 => greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 => off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF/CTRL style over prompt + output tokens
    presence_penalty: float = 0.0  # OpenAI style over output tokens
    frequency_penalty: float = 0.0
    seed: int | None = None  # same seed => same text, whatever else is in the batch
    stop: list[str] = field(default_factory=list)  # stop strings, excluded from the text
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None: off; k >= 0: sampled token's logprob + top k
    skip_special_tokens: bool = True
    # 0: interactive. Higher: background (batch jobs): while an interactive sequence is
    # computing its prompt (or waiting with room to start), background rows sit the step out,
    # keeping their KV blocks, so interactive time to first token does not pay for them.
    priority: int = 0
    # Grammar the output must follow (a `fleetlm.engine.structured.StructuredOutput`:
    # json_object, json_schema, regex, grammar); None: free text.
    structured: object | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        if self.top_k == -1:
            self.top_k = 0
        checks = [
            (self.n >= 1, "n", "must be >= 1"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be >= 1"),
            (self.temperature >= 0, "temperature", "must be >= 0"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "must be >= 0, or -1 to disable"),
            (0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs", "must be in [0, 20]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"),
            (self.priority >= 0, "priority", "must be >= 0"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise InvalidRequestError(f"{name} {why}, got {getattr(self, name)!r}", param=name)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_dict(cls, values: dict) -> "SamplingParams":
        """Build from a plain dict; unknown keys are an error, not silently ignored."""
        try:
            return from_dict(cls, values, label="sampling parameter")
        except ConfigKeyError as exc:
            raise InvalidRequestError(str(exc), param=exc.keys[0]) from None
