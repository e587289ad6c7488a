"""Compound AI: routing across a fleet of models (``router/``); tools and programs later.

Nothing here runs at import: each subpackage imports its heavy dependencies (torch, the
embedding model, plotting) only inside the functions that need them.
"""
