"""Errors of the models package."""


class ModelNotAvailableError(RuntimeError):
    """A model id cannot be turned into a local folder (missing package, unknown id, ...)."""
