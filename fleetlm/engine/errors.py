"""Typed errors of the engine. Those raised before any work is queued are a request's fault:
the API layer maps each to an OpenAI-shaped 4xx; `param` names the offending request field.
`RequestFailedError` is the engine's own failure on one request, which ends that request
only (a 500 for it; every other request goes on)."""

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


class RequestFailedError(RuntimeError):
    """One request failed while the engine handled its new token (a fleetlm bug, not the
    request's fault); it was ended and its KV blocks freed, and the engine serves the rest."""
