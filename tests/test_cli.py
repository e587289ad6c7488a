"""`fleet models` and `fleet chat` against a running server, and `fleet chat` in-process."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.api.conftest import start_server


def fleet(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetlm.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


def test_models_and_chat_against_a_running_server(tiny_gemma):
    running, srv, thread = start_server(tiny_gemma)
    try:
        models = fleet("models", "--url", running.base_url)
        assert models.returncode == 0, models.stderr
        assert models.stdout.split()[0] == "tiny"
        chat = fleet("chat", "--url", running.base_url, "--model", "tiny", "--max-tokens", "5", "hello")
        assert chat.returncode == 0, chat.stderr
        # the random tiny model may answer with nothing printable; the server saw the request
        metrics = httpx.get(f"{running.base_url}/metrics").text
        assert 'fleetlm_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in metrics
        bad = fleet("chat", "--url", running.base_url, "--model", "nope", "hello")
        assert bad.returncode == 1 and "does not exist" in bad.stderr
    finally:
        srv.should_exit = True
        thread.join(10)


def test_interactive_chat_in_process(tiny_gemma):
    run = fleet("chat", "--url", "http://127.0.0.1:9", "--model", str(tiny_gemma), "--dtype", "float32",
                "--max-tokens", "4", stdin="first question\nsecond question\n\n")
    assert run.returncode == 0, run.stderr
    assert "in-process" in run.stderr
    assert run.stdout.count("you> ") == 3  # two turns answered, then the empty line ends it


def test_a_missing_optional_dependency_names_its_extra(monkeypatch, capsys):
    from fleetlm import cli

    def needs_peft(args):
        raise ModuleNotFoundError("No module named 'peft'", name="peft")

    monkeypatch.setattr(cli, "cmd_models", needs_peft)
    assert cli.main(["models"]) == 2
    assert "pip install 'fleetlm[train]'" in capsys.readouterr().err


def test_serve_flags_left_out_keep_the_dataclass_defaults():
    from fleetlm.cli import _engine_config, build_parser
    from fleetlm.config import EngineConfig

    args = build_parser().parse_args(["serve", "--kv-cache-gb", "2"])
    assert _engine_config(args) == EngineConfig(kv_cache_memory_gb=2.0)
    assert args.port is None and args.max_num_seqs is None  # defaults live on the dataclasses


def test_generate_with_speculation_prints_stats_and_bad_options_exit_clearly(tiny_gemma):
    run = fleet("generate", "--model", str(tiny_gemma), "--dtype", "float32", "--speculative", "ngram",
                "--num-draft-tokens", "3", "--max-tokens", "24", "--stats", "--prompt", "abcabcabcabcabc")
    assert run.returncode == 0, run.stderr
    stats = dict(line.split(" ", 1) for line in run.stderr.splitlines() if line.startswith(("tpot_ms", "draft_")))
    assert float(stats["tpot_ms"]) > 0 and int(stats["draft_tokens"]) >= 0
    bad = fleet("generate", "--model", str(tiny_gemma), "--speculative", "ngram", "--num-draft-tokens", "0",
                "--prompt", "x")
    assert bad.returncode != 0 and "num_draft_tokens must be in [1, 16]" in bad.stderr
    assert "Traceback" not in bad.stderr
