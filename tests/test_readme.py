"""The README is a manual that works: short, its fleet.toml example loads, and no document
speaks of the project's tracker."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from fleetlm.fleet_toml import load_fleet_toml

REPO = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_its_fleet_toml_loads(tmp_path):
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    examples = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert examples
    path = tmp_path / "fleet.toml"
    path.write_text(examples[0])
    fleet = load_fleet_toml(str(path))
    assert fleet.upstreams and fleet.routers and fleet.programs and fleet.tool_agents and fleet.tenants


def test_the_docs_fleet_toml_examples_load(tmp_path):
    """Every ```toml block of docs/ that starts with a table loads (pools, devices, tenants)."""
    loaded = 0
    for doc in sorted((REPO / "docs").glob("*.md")):
        for k, example in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)):
            if example.lstrip().startswith("["):
                path = tmp_path / f"{doc.stem}-{k}.toml"
                path.write_text(example)
                load_fleet_toml(str(path))
                loaded += 1
    assert loaded >= 3


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
