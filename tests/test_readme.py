"""The README is a manual that works: short, its fleet.toml example loads, and no document
speaks of the project's tracker."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from fleetlm.config import load_fleet_toml

REPO = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_its_fleet_toml_loads(tmp_path):
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    examples = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert examples
    path = tmp_path / "fleet.toml"
    path.write_text(examples[0])
    fleet = load_fleet_toml(str(path))
    assert fleet.upstreams and fleet.routers and fleet.pools and fleet.devices and fleet.tool_agents


def test_no_tracker_language_in_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"\bissue \d|issue's|done[- ]?(point|when)|\b(first|second|third|fourth|fifth|sixth|"
                         r"seventh|this|last) session\b", re.I)
    hits = []
    for name in files:
        if name.endswith((".md", ".py", ".txt", ".toml")) and name != "tests/test_readme.py":
            for n, line in enumerate((REPO / name).read_text(errors="replace").splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{name}:{n}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
