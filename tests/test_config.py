"""fleet.toml and config dataclasses: typed tables, clear errors, paths beside the file."""

from __future__ import annotations

import pytest

from fleetlm.config import Budget, ProgramConfig, from_dict
from fleetlm.fleet_toml import load_fleet_toml


def test_program_tables_and_their_budgets(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[[program]]\nname = "vote-9"\nprogram = "sc"\nparams = { n = 9 }\n'
                    'budget = { max_calls = 20, max_seconds = 60 }\n')
    prog = load_fleet_toml(str(path)).programs[0]
    assert prog.params == {"n": 9} and prog.budget == Budget(max_calls=20, max_seconds=60)
    path.write_text('[[program]]\nname = "x"\nprogram = "sc"\nbudget = { max_cals = 2 }\n')
    with pytest.raises(ValueError, match="Unknown program x: budget key\\(s\\): max_cals"):
        load_fleet_toml(str(path))
    with pytest.raises(ValueError, match="max_tokens must be > 0"):
        Budget(max_tokens=0)
    with pytest.raises(ValueError, match="letters, digits"):
        ProgramConfig(name="a b", program="sc")


def test_relative_paths_are_read_beside_the_file(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "fleet.toml"
    path.write_text('[[router]]\nname = "r"\ncandidates = { a = "m" }\npath = "routers/r"\n'
                    '[[tool_agent]]\nname = "t"\nplanner = "m"\nsqlite = "/abs/db.sqlite"\ndocs = "docs"\n')
    fleet = load_fleet_toml(str(path))
    assert fleet.routers[0].path == str(conf / "routers" / "r")
    assert fleet.tool_agents[0].sqlite == "/abs/db.sqlite" and fleet.tool_agents[0].docs == str(conf / "docs")


def test_from_dict_names_unknown_and_missing_keys():
    with pytest.raises(ValueError, match="Unknown Budget key\\(s\\): max_cals"):
        from_dict(Budget, {"max_cals": 1})
    with pytest.raises(ValueError, match="missing keys \\['program'\\]"):
        ProgramConfig.from_dict({"name": "x"})
