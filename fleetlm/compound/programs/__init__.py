"""Compound programs served as model ids (`compound/<name>`): write an async function of a
`Ctx`, mark it with `@program(name)`, and serve it with `fleet serve --programs-dir DIR`
(see docs/programs.md). The tool agent (`tool_agent.py`) is configured in fleet.toml."""

from fleetlm.compound.programs.ctx import Ctx, Streamed, majority, program

__all__ = ["Ctx", "Streamed", "majority", "program"]
