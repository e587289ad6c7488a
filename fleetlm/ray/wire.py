"""What crosses a deployment handle besides chunks: a Target's typed error, as data.

`APIError`s do not pickle (their constructors take keyword arguments), and Ray would wrap
them in its own exception anyway; a replica yields a `RemoteError` instead and the gateway
raises the same class again, so routers still tell a 400 from a 503."""

from __future__ import annotations

from dataclasses import dataclass

from fleetlm.openai.errors import APIError


@dataclass(frozen=True)
class RemoteError:
    """An `APIError` raised in a replica: its class (pickled by reference), message and fields."""

    kind: type
    message: str
    fields: dict

    @classmethod
    def of(cls, exc: APIError) -> RemoteError:
        return cls(type(exc), str(exc), dict(vars(exc)))

    def exception(self) -> APIError:
        """The same typed error, raised again on this side."""
        exc = self.kind.__new__(self.kind)
        Exception.__init__(exc, self.message)
        exc.__dict__.update(self.fields)
        return exc
