"""Typed errors the engine raises before any work is queued. The API layer maps each to an
OpenAI-shaped 4xx; `param` names the offending request field."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """The request cannot be served as given (bad parameter, empty prompt, ...)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


class PromptTooLongError(InvalidRequestError):
    """The prompt plus at least one generated token does not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_model_len: int):
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has "
            f"{prompt_tokens} tokens (at least one more is needed to generate).",
            param="prompt",
        )
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len
