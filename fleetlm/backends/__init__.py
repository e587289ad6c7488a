"""Targets behind model ids: the local engine and upstream OpenAI-compatible servers."""
