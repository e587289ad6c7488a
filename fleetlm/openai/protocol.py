"""Pydantic models of the OpenAI request bodies fleetlm accepts.

Unknown fields are rejected (400 naming the field), so a typo never silently changes
behaviour; text that is not valid Unicode (a lone surrogate such as JSON's "\ud800", which no
tokenizer or encoder can take) is a 400 naming the field, wherever it is (tool schemas too); a few OpenAI fields that have no effect on a self-hosted server (`store`,
`metadata`, `service_tier`, `user`) are accepted and ignored. Value ranges follow OpenAI's
documentation; Fireworks' extensions `top_k`, `min_p` and `repetition_penalty` are accepted.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

MAX_STOP = 16  # stop strings per request
MAX_STOP_CHARS = 1000  # per stop string
MAX_TOOLS = 1024  # tools per request (a tool budget, `max_tools`, then keeps the relevant ones)
MAX_TOOLS_JSON_BYTES = 2 * 2**20  # all tool definitions together, as JSON


def invalid_text_at(value, path: str = "") -> str | None:
    """The path (`messages[0].content`) of the first string in `value` (strings, lists, dicts,
    keys too) that cannot be encoded as UTF-8, or None. Nested request models check themselves."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items()]
        for k, v in items:
            found = invalid_text_at(k, f"{path}.<key>") or invalid_text_at(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = invalid_text_at(v, f"{path}[{i}]")
            if found:
                return found
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid_unicode(self):
        for name, value in self.__dict__.items():
            if isinstance(value, BaseModel):
                continue  # checked when it was built
            found = invalid_text_at(value, name)
            if found:
                raise ValueError(f"{found} is not valid Unicode text (it holds a lone surrogate, such as "
                                 "\\ud800); send UTF-8 text")
        return self


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: StrictBool = False
    continuous_usage_stats: StrictBool = False


class JsonSchemaSpec(_Strict):
    name: StrictStr = "schema"
    description: StrictStr | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: StrictBool | None = None
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


Temperature = Annotated[float, Field(ge=0, le=2)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Prob = Annotated[float, Field(gt=0, le=1)]


class _SamplingFields(_Strict):
    model: StrictStr
    # Not a wire field: the server sets it (batch lines: 1, background); the local engine
    # schedules by it (SamplingParams.priority). Clients cannot send it.
    _priority: int = 0
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: Prob | None = None
    n: Annotated[StrictInt, Field(ge=1, le=16)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: (Annotated[StrictStr, Field(max_length=MAX_STOP_CHARS)]
           | Annotated[list[Annotated[StrictStr, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP)]
           | None) = None
    seed: StrictInt | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    user: StrictStr | None = None
    # Fireworks / vLLM extensions
    top_k: Annotated[StrictInt, Field(ge=-1, le=100_000)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    ignore_eos: StrictBool = False
    # accepted and ignored: they have no meaning for a self-hosted server
    store: StrictBool | None = None
    metadata: dict[str, StrictStr] | None = None
    service_tier: StrictStr | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    # checked in tool_prompt (400s naming the offending tool); tool_choice: "auto" | "none" |
    # "required" | {"type": "function", "function": {"name": ...}}
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    # fleetlm extension: keep at most this many tools, the most relevant to the last user
    # message (tool retrieval); overrides the server's budget
    max_tools: Annotated[StrictInt, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _tools_size(self):
        if self.tools:
            size = len(json.dumps(self.tools, ensure_ascii=False).encode())
            if size > MAX_TOOLS_JSON_BYTES:
                raise ValueError(f"tools are {size} bytes as JSON, over the {MAX_TOOLS_JSON_BYTES} allowed")
        return self


PromptInput = (
    StrictStr
    | Annotated[list[StrictStr], Field(min_length=1)]
    | Annotated[list[StrictInt], Field(min_length=1)]
    | Annotated[list[Annotated[list[StrictInt], Field(min_length=1)]], Field(min_length=1)]
)


class CompletionRequest(_SamplingFields):
    prompt: PromptInput
    logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: Annotated[StrictInt, Field(ge=1, le=1)] | None = None  # only 1: no server-side reranking
    response_format: ResponseFormat | None = None


class EmbeddingRequest(_Strict):
    model: StrictStr
    input: (StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=2048)]
            | Annotated[list[StrictInt], Field(min_length=1)]
            | Annotated[list[Annotated[list[StrictInt], Field(min_length=1)]], Field(min_length=1, max_length=2048)])
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None


class LoadLoRARequest(_Strict):
    """Body of POST /v1/load_lora_adapter (vLLM's shape)."""

    lora_name: StrictStr
    lora_path: StrictStr


class UnloadLoRARequest(_Strict):
    """Body of POST /v1/unload_lora_adapter (vLLM's shape; lora_int_id is accepted and ignored)."""

    lora_name: StrictStr
    lora_int_id: int | None = None
