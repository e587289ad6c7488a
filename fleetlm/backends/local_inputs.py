"""OpenAI requests -> the local engine's inputs: prompt token ids and one `SamplingParams`.

Contract: every check raises before the engine sees the request: an `APIError` (400, naming
the field) or the engine's own `InvalidRequestError`s, which the backend maps the same way; a grammar (response_format or tools) is compiled here, so a schema llguidance
rejects is a 400 too. Tools go through `openai.tool_calls` (prompt block, grammar) with this
server's tool budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetlm.backends.tool_budget import select_tools_for_budget
from fleetlm.engine.errors import PromptTooLongError
from fleetlm.engine.sampling_params import SamplingParams
from fleetlm.engine.structured import GrammarError, StructuredOutput
from fleetlm.openai.errors import BadRequestError
from fleetlm.openai.protocol import ChatCompletionRequest, CompletionRequest
from fleetlm.openai.tool_calls import ToolSession, prompt_messages, tool_session


@dataclass
class ChatInputs:
    ids: list[int]  # the templated prompt
    params: SamplingParams
    tools: ToolSession | None  # None: a request without tools


@dataclass
class CompletionInputs:
    prompts: list[list[int]]  # one engine request per prompt
    params: SamplingParams
    echo: list[str]  # per prompt: the text echoed before the completion ("" without echo)


class EngineInputs:
    """Builds engine inputs for one engine (its tokenizer, context length and grammars)."""

    def __init__(self, engine, *, max_tools: int | None = None, prepare_timeout_s: float = 10.0):
        self.engine = engine  # LLMEngine: tokenizer, max_model_len, grammar compiler
        self.tokenizer = engine.tokenizer
        self.max_tools = max_tools  # the server's tool budget; None: no limit
        self.prepare_timeout_s = prepare_timeout_s  # the backend's bound on building one request's inputs

    def chat(self, req: ChatCompletionRequest) -> ChatInputs:
        tools = tool_session(req, max_tools=self.max_tools, select=select_tools_for_budget)
        ids = self.chat_prompt_ids(req, tools)
        want_lp = req.logprobs or req.top_logprobs is not None
        params = self.sampling_params(req, len(ids), max_tokens=req.max_completion_tokens or req.max_tokens,
                                      logprobs=(req.top_logprobs or 0) if want_lp else None, tools=tools)
        return ChatInputs(ids, params, tools)

    def completion(self, req: CompletionRequest) -> CompletionInputs:
        if req.suffix:
            raise BadRequestError("suffix is not supported", param="suffix")
        prompts, texts = self.completion_prompts(req)
        max_tokens = 16 if req.max_tokens is None else req.max_tokens  # OpenAI's default for completions
        params = self.sampling_params(req, len(max(prompts, key=len)), max_tokens=max_tokens, logprobs=req.logprobs)
        echo = [t if t is not None else self.tokenizer.decode(p) for t, p in zip(texts, prompts)] \
            if req.echo else [""] * len(prompts)
        return CompletionInputs(prompts, params, echo)

    def chat_prompt_ids(self, req: ChatCompletionRequest, tools: ToolSession | None = None) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadRequestError(f"model {req.model!r} has no chat template; use /v1/completions", param="messages")
        messages = prompt_messages(req, tools)
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja raise_exception: roles that do not alternate, ...
            raise BadRequestError(f"messages cannot be formatted for this model: {exc}", param="messages")
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def completion_prompts(self, req: CompletionRequest) -> tuple[list[list[int]], list[str | None]]:
        p = req.prompt
        if isinstance(p, str):
            texts = [p]
        elif isinstance(p[0], str):
            texts = list(p)
        elif isinstance(p[0], int) or isinstance(p[0], list):
            prompts = [list(p)] if isinstance(p[0], int) else [list(x) for x in p]
            vocab = self.engine.vocab_size  # checked here too: echo decodes the ids before the engine sees them
            bad = next((t for ids in prompts for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise BadRequestError(f"token id {bad} is outside the vocabulary [0, {vocab})", param="prompt")
            return prompts, [None] * len(prompts)
        if any(not t for t in texts):
            raise BadRequestError("prompt must not be empty", param="prompt")
        return [self.tokenizer(t).input_ids for t in texts], texts

    def sampling_params(self, req, prompt_len: int, *, max_tokens: int | None, logprobs: int | None,
                        tools: ToolSession | None = None) -> SamplingParams:
        limit = self.engine.max_model_len
        if prompt_len >= limit:
            raise PromptTooLongError(prompt_len, limit)
        if max_tokens is not None and prompt_len + max_tokens > limit:
            raise BadRequestError(f"This model's maximum context length is {limit} tokens. However, you "
                                  f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, "
                                  f"{max_tokens} for the completion). Reduce the prompt or max_tokens.",
                                  param="max_tokens", code="context_length_exceeded")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if any(not s for s in stop):
            raise BadRequestError("stop strings must not be empty", param="stop")
        structured = None
        if req.response_format is not None:
            structured = StructuredOutput.from_response_format(
                req.response_format.model_dump(by_alias=True, exclude_none=True))
            if structured is not None:  # compiled here (cached), so a bad schema is a 400 before queueing
                self.engine.grammar().compile(structured)
        if tools is not None and tools.grammar is not None:
            if structured is not None:
                raise BadRequestError("response_format cannot be combined with tools unless tool_choice is 'none'",
                                      param="response_format")
            structured = self._tool_grammar(tools)
        extra = {"structured": structured} if structured is not None else {}
        return SamplingParams(
            n=req.n, max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0, min_p=req.min_p or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, seed=req.seed, stop=stop, logprobs=logprobs,
            ignore_eos=req.ignore_eos, priority=req._priority, **extra)

    def _tool_grammar(self, tools: ToolSession) -> StructuredOutput:
        """The tools' grammar, compiled now so that a schema llguidance rejects is a 400 on `tools`."""
        spec = StructuredOutput("grammar", tools.grammar)
        try:
            self.engine.grammar().compile(spec)
        except GrammarError as exc:
            raise BadRequestError(f"tool parameters cannot be enforced: {exc}", param="tools") from None
        return spec
