"""`make serve` as a newcomer runs it: router/auto sends an extraction to the extract-contact
expert and a tool-calling question to the fc expert, on the real gemma-3-270m."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import tempfile
from pathlib import Path

import openai
import pytest

from tests.api.conftest import free_port, stop_process, wait_healthy

REPO = Path(__file__).resolve().parents[2]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}]


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "experts" / "router" / "router.json").is_file(), reason="no shipped router")
def test_make_serve_answers_auto_with_the_right_expert():
    from fleetlm.tune.datagen import extract

    with tempfile.TemporaryDirectory() as tmp:
        _, test = extract.generate(Path(tmp), n_train=1, n_test=1, seed=0)
        row = json.loads(test.read_text().splitlines()[0])
    port = free_port()
    proc = subprocess.Popen(["make", "serve", f"PORT={port}"], cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout=300)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="router/auto", messages=row["messages"])
        assert raw.headers["x-fleetlm-served-by"] == "gemma-3-270m:extract-contact"
        assert json.loads(raw.parse().choices[0].message.content) == row["expected"]
        raw = client.chat.completions.with_raw_response.create(
            model="router/auto", tools=WEATHER, messages=[{"role": "user", "content": "What's the weather in Oslo?"}])
        assert raw.headers["x-fleetlm-served-by"] == "gemma-3-270m:fc"
        call = raw.parse().choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
        # the README's first example, as printed (but for the port)
        first = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(first.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), {})
        assert out.getvalue().split() == ["15", "compound/arith"]
    finally:
        stop_process(proc, group=True)
