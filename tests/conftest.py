"""Shared fixtures: tiny random-weight models of each supported family, saved as Hugging
Face folders with a byte-level tokenizer (nanochat's ByteTokenizer idea), so every engine
test runs on CPU in seconds and is checked against `transformers` on the same weights."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from tests.tiny_models import FAMILIES, make_tiny_model

# Triton runs its kernels in its interpreter (numpy, on the CPU) or compiled, and the choice is
# made for the whole process when triton is first imported (its own library functions are
# decorated then). Without a GPU the Triton kernels' tests need the interpreter, so it is set
# here, before any test module imports triton; with a GPU they run compiled.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def tiny_family(request, tmp_path_factory):
    """(family name, folder) for each family; built once per test session."""
    name = request.param
    return name, make_tiny_model(name, tmp_path_factory.mktemp(f"tiny-{name}"))


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory):
    return make_tiny_model("gemma3", tmp_path_factory.mktemp("tiny-gemma3-single"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the session (tests/pg_server.py); skipped,
    saying why, where its binaries or psycopg are missing."""
    import importlib.util

    from tests.api.conftest import free_port
    from tests.pg_server import PgServer, binaries

    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed (pip install 'fleetlm[postgres]')")
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    server = PgServer(bin_dir, free_port())
    try:
        server.start()
    except Exception as exc:
        server.stop()
        pytest.skip(f"PostgreSQL did not start: {exc} {getattr(exc, 'stderr', '')}")
    yield server
    server.stop()
