"""Compound programs: catalog Targets that call other Targets and tools (compound/<name>)."""
