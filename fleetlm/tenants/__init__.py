"""Tenants: API keys with budgets and rate limits, the usage ledger and the Batch API, on one
embedded database (see `Tenants` in gate.py)."""
