"""Where programs come from: the built-ins, a `--programs-dir` folder, installed packages
(the `fleetlm.programs` entry-point group), and `[[program]]` tables that serve a program
under a new name with fixed parameters.

Contract: a program is an async function marked with `@program(name)`. A folder's file that
fails to import, or a name defined twice, is an error naming the file; the other programs
still load (the caller logs the errors and serves the rest).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from fleetlm.compound.programs.ctx import PROGRAM_ATTR
from fleetlm.compound.programs.target import ProgramTarget
from fleetlm.config import ProgramConfig

ENTRY_POINT_GROUP = "fleetlm.programs"
log = logging.getLogger("fleetlm.programs")


def build_programs(configs: list[ProgramConfig], *, programs_dir: str | None, resolve: Callable,
                   default_model: str, engines: frozenset[str]) -> list[ProgramTarget]:
    """A Target per registered program (built-ins, then `programs_dir`, then installed
    packages; a broken source is logged and skipped) and per `[[program]]` table."""
    registered = builtin_programs()
    errors: list[str] = []
    for found, errs in ([load_dir(programs_dir)] if programs_dir else []) + [installed_programs()]:
        errors += errs
        _merge(registered, found, "programs", errors)
    for e in errors:
        log.error("program not loaded: %s", e)
    common = {"resolve": resolve, "default_model": default_model, "engines": engines}
    out = [ProgramTarget(name, fn, **common) for name, fn in registered.items()]
    for cfg in configs:
        if cfg.program not in registered:
            raise ValueError(f"program {cfg.name}: no program {cfg.program!r} is registered "
                             f"(known: {', '.join(sorted(registered))})")
        if cfg.name in registered:
            raise ValueError(f"program {cfg.name}: compound/{cfg.name} is already a registered program")
        registry = None
        if cfg.tools:
            from fleetlm.compound.tools.registry import ToolRegistry, python_tool

            registry = ToolRegistry(python_tool(ref) for ref in cfg.tools)
        out.append(ProgramTarget(cfg.name, registered[cfg.program], params=cfg.params, budget=cfg.budget,
                                 registry=registry, tool_timeout_s=cfg.tool_timeout_s, **common))
    return out


def programs_in(module) -> dict[str, Callable]:
    """The @program functions of a module, by program name."""
    return {getattr(fn, PROGRAM_ATTR): fn for fn in vars(module).values() if hasattr(fn, PROGRAM_ATTR)}


def builtin_programs() -> dict[str, Callable]:
    from fleetlm.compound.programs import builtin

    return programs_in(builtin)


def load_dir(folder: str | Path) -> tuple[dict[str, Callable], list[str]]:
    """The programs of every .py file in `folder` (sorted), and one error per broken file."""
    found: dict[str, Callable] = {}
    errors: list[str] = []
    root = Path(folder)
    if not root.is_dir():
        return {}, [f"programs folder {root} does not exist"]
    for path in sorted(root.glob("*.py")):
        name = f"fleetlm_programs_{path.stem}"
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look modules up by name
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - a user's file: report it, load the rest
            sys.modules.pop(name, None)
            errors.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        _merge(found, programs_in(module), str(path), errors)
    return found, errors


def installed_programs() -> tuple[dict[str, Callable], list[str]]:
    """Programs of installed packages: each `fleetlm.programs` entry point names a module
    (all its @program functions) or one @program function."""
    found: dict[str, Callable] = {}
    errors: list[str] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken package must not stop the server
            errors.append(f"entry point {ep.name} ({ep.value}): {type(exc).__name__}: {exc}")
            continue
        progs = {getattr(obj, PROGRAM_ATTR): obj} if hasattr(obj, PROGRAM_ATTR) else programs_in(obj)
        _merge(found, progs, f"entry point {ep.name}", errors)
    return found, errors


def _merge(into: dict, new: dict, where: str, errors: list[str]) -> None:
    for name, fn in new.items():
        if name in into:
            errors.append(f"{where}: program {name!r} is already defined; this one is skipped")
        else:
            into[name] = fn
