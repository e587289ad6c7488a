"""The machinery every config dataclass uses: `from_dict` (unknown keys are errors), the
`FromDict` mixin, CLI helpers (`given`, `default_of`) and where the shared data lives.
Imports nothing of fleetlm."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

DATA_DIR_ENV = "FLEETLM_DATA_DIR"


def shared_data(*parts: str) -> Path:
    """The public benchmark data (routing outcomes, function-calling sets, traces), `parts`
    joined below its root: $FLEETLM_DATA_DIR when set, else `shared/data` beside the
    checkout (the folder that holds this repository). Read from there, never copied in."""
    root = os.environ.get(DATA_DIR_ENV)
    base = Path(root) if root else Path(__file__).resolve().parents[3] / "shared" / "data"
    return base.joinpath(*parts)


def given(cls, **flags):
    """A config dataclass from command-line flags: a flag left at None keeps the dataclass's
    default, so every default lives on the dataclass (CLI flags default to None)."""
    return cls(**{k: v for k, v in flags.items() if v is not None})


def default_of(cls, name: str) -> str:
    """`(default X)` for a help text, read from the dataclass field `name`."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return f"(default {value})"


class FromDict:
    """Mixin for config dataclasses: `Cls.from_dict(values)`."""

    @classmethod
    def from_dict(cls, values: dict, *, label: str | None = None):
        return from_dict(cls, values, label=label)


class ConfigKeyError(ValueError):
    """Unknown or missing keys; `keys` names them (unknown ones first)."""

    def __init__(self, message: str, keys: list[str]):
        super().__init__(message)
        self.keys = keys


def from_dict(cls, values: dict, *, label: str | None = None):
    """`cls(**values)` for a config dataclass, with clear errors: unknown keys (a typo must
    never be silently ignored) and missing required ones are named. `label` names the table
    in messages (default: the class name)."""
    label = label or cls.__name__
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigKeyError(f"Unknown {label} key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                             unknown)
    missing = sorted(f.name for f in fields if f.name not in values and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ConfigKeyError(f"{label}: missing keys {missing}", missing)
    return cls(**values)
