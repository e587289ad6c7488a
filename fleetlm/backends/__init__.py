"""Targets behind model ids: the local engine and its adapters (local.py), upstream
OpenAI-compatible servers (upstream.py), routers (router.py) and pools (pools.py)."""
