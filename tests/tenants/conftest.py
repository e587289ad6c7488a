"""The tenants' `db` fixture: each test that takes it runs once on a SQLite file and once on
a fresh database of a real PostgreSQL server (the session's `postgres`, tests/conftest.py;
skipped, saying why, where it cannot start)."""

from __future__ import annotations

import pytest

from fleetlm.tenants.db import Database


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    if request.param == "sqlite":
        d = Database(tmp_path / "t.db")
    else:
        d = Database(request.getfixturevalue("postgres").new_database())
    yield d
    d.close()
