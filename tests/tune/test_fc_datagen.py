"""Function-calling SFT data (fleetlm.tune.datagen.fc): every gold call validates against its
tool's schema, every kind of example occurs, rows load as `fleet tune sft` data, and no tool
name is a BFCL function name (BFCL is read here only to check that)."""

import json
import re

import jsonschema
import pytest

from fleetlm.config import shared_data
from fleetlm.tune.data import parse_example, plain_messages
from fleetlm.tune.datagen import fc, fc_specs_modifiers
from fleetlm.tune.datagen.fc_values import (
    CITY_COUNTRY,
    COMPOUNDING,
    CURRENCY_NAMES,
    MONTHS,
    NUMBER_WORDS,
    SPANS,
    US_CITIES,
)

SHARED = shared_data("function_calling")
needs_data = pytest.mark.skipif(not (SHARED / "nestful").is_dir(),
                                reason="public data not found at ../shared/data (see ../shared/data/SOURCES.md)")


def _calls(row):
    return row["messages"][-1].get("tool_calls") or []


def _check_rows(rows):
    for row in rows:
        parse_example(row)  # the SFT loader's own validation
        tools = {t["function"]["name"]: t["function"]["parameters"] for t in row["tools"]}
        assert len(tools) == len(row["tools"]), "duplicate tool names in one example"
        for call in _calls(row):
            name = call["function"]["name"]
            assert name in tools, f"call to {name} which is not among the example's tools"
            jsonschema.validate(json.loads(call["function"]["arguments"]), tools[name])
        if not _calls(row):
            assert row["messages"][-1]["content"] in fc.REFUSALS


def test_templated_only_rows_are_valid_and_cover_every_kind(tmp_path):
    rows = fc.generate_rows(300, seed=3, root=tmp_path)  # no data there: templated functions only
    _check_rows(rows)
    n_calls = [len(_calls(r)) for r in rows]
    assert 0 in n_calls and 1 in n_calls and max(n_calls) >= 2
    multi_tool = [r for r in rows if len(_calls(r)) == 1 and len(r["tools"]) > 1]
    assert multi_tool, "no example chooses among several tools"
    parallel_same = [r for r in rows if len({c["function"]["name"] for c in _calls(r)}) == 1 < len(_calls(r))]
    parallel_diff = [r for r in rows if len({c["function"]["name"] for c in _calls(r)}) > 1]
    assert parallel_same and parallel_diff


def test_deterministic_for_a_seed(tmp_path):
    assert fc.generate_rows(20, seed=1, root=tmp_path) == fc.generate_rows(20, seed=1, root=tmp_path)
    assert fc.generate_rows(20, seed=1, root=tmp_path) != fc.generate_rows(20, seed=2, root=tmp_path)


def _dates(value) -> list[tuple[int, int, int]]:
    """(year, month, day) readings of a date string in YYYY-MM-DD, MM-DD-YYYY, DD/MM/YYYY or
    MM/DD/YYYY (a slashed date is read both ways)."""
    if not isinstance(value, str):
        return []
    if m := re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)", value):
        return [(int(m[1]), int(m[2]), int(m[3]))]
    if m := re.fullmatch(r"(\d\d)-(\d\d)-(\d{4})", value):
        return [(int(m[3]), int(m[1]), int(m[2]))]
    if m := re.fullmatch(r"(\d\d)/(\d\d)/(\d{4})", value):
        a, b, y = int(m[1]), int(m[2]), int(m[3])
        return [(y, mo, d) for mo, d in ((a, b), (b, a)) if 1 <= mo <= 12]
    return []


def _spoken(value) -> list[str]:
    """Ways a question may write an argument: as is, or in a form the description converts."""
    forms = [str(value)]
    if isinstance(value, float) and 0 < value < 1:
        forms.append(f"{value * 100:g}%")
        forms.append(f"{value * 100:g} percent")
    if isinstance(value, int) and value >= 1_000_000:
        forms.append(f"{value / 1e6:g} million")
    if isinstance(value, str) and re.fullmatch(r"[^,]+, [A-Z]{2}", value):
        forms.append(value.split(",")[0])  # "Austin, TX" asked as "Austin" / "Austin, Texas"
    for y, m, d in _dates(value):
        month = MONTHS[m - 1]
        forms += [f"{month} {d}, {y}", f"{d} {month} {y}", f"{month[:3]} {d}, {y}"]
    if isinstance(value, str) and value in CURRENCY_NAMES:
        forms += CURRENCY_NAMES[value]
    if isinstance(value, float) and value >= 1:
        forms += [f"{value:g}%", f"{value:g} percent"]  # a rate "as a percentage"
    if isinstance(value, int) and not isinstance(value, bool):
        forms += [f"{value:,}"]
        forms += [NUMBER_WORDS[value]] if 0 <= value < len(NUMBER_WORDS) else []
        forms += [w for w, n in list(COMPOUNDING.items()) + list(SPANS.items()) if n == value]
        forms += [f"{value // 60} minute"] if value and value % 60 == 0 else []
        forms += ["rest"] if value == 0 else []
    forms += [city for city, state, _ in US_CITIES if state == value]  # the state of a city said alone
    return forms


def test_values_are_copied_or_converted_from_the_question(tmp_path):
    """Every required string/number argument of a single call appears in the user's text,
    as is or in a spoken form its description asks to convert ("5%" for 0.05)."""
    converted = 0
    for row in fc.generate_rows(400, seed=5, root=tmp_path):
        calls = _calls(row)
        if len(calls) != 1:
            continue
        question = row["messages"][-2]["content"]
        for value in json.loads(calls[0]["function"]["arguments"]).values():
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                forms = _spoken(value)
                assert any(f in question for f in forms), (value, question)
                converted += str(value) not in question
    assert converted >= 20, "the data should teach value conversions, not only copying"


def test_optional_parameters_sometimes_left_out(tmp_path):
    spec = next(s for s in fc.SPECS if s.name == "hotel_room_search")
    source = fc.own_source(spec)
    import random

    r = random.Random(0)
    seen = [set(source.sample(r)[1]) for _ in range(60)]
    assert any("guests" in s for s in seen) and any("guests" not in s for s in seen)
    assert all({"city", "check_in", "nights"} <= s for s in seen)


def test_modifier_specs_are_opt_in_and_set_optionals_in_passing(tmp_path):
    """--modifier-specs adds functions whose optionals the question says mid-sentence; without it
    the rows are those of the earlier recipe; the gold call holds an optional exactly when the
    question says it."""
    import random

    plain = fc.generate_rows(200, seed=4, root=tmp_path)
    assert plain == fc.generate_rows(200, seed=4, root=tmp_path, modifier_specs=False)
    names = {s.name for s in fc_specs_modifiers.SPECS}
    assert not names & {c["function"]["name"] for r in plain for c in _calls(r)}
    rows = fc.generate_rows(300, seed=4, root=tmp_path, modifier_specs=True, optional_rate=0.6)
    _check_rows(rows)
    assert names & {c["function"]["name"] for r in rows for c in _calls(r)}

    source = fc.own_source(next(s for s in fc_specs_modifiers.SPECS if s.name == "concerts_upcoming_find"), 0.6)
    r, said, unsaid = random.Random(0), 0, 0
    for _ in range(80):
        question, args = source.sample(r)
        genre = next((g for g in ("Rock", "Jazz", "Pop", "Classical", "Hip hop") if f"{g} " in question), None)
        assert args.get("genre") == genre, question
        said, unsaid = said + (genre is not None), unsaid + (genre is None)
        assert not question.startswith(" ") and "  " not in question
    assert said > 30 and unsaid > 15
    with pytest.raises(ValueError, match="optional_rate"):
        fc.generate_rows(5, seed=0, root=tmp_path, optional_rate=1.5)


def test_rows_render_as_the_server_renders_them(tmp_path):
    row = next(r for r in fc.generate_rows(30, seed=0, root=tmp_path) if _calls(r))
    text = "\n".join(m["content"] for m in plain_messages(row["messages"], row["tools"]))
    assert "<tools>" in text and '<tool_call>{"name":' in text


def test_bad_n_is_a_clear_error(tmp_path, capsys):
    assert fc.main(["--out", str(tmp_path / "x.jsonl"), "--n", "0"]) == 2
    assert "n must be >= 1" in capsys.readouterr().err


def _bfcl_names() -> set[str]:
    names = set()
    for path in list((SHARED / "bfcl").glob("BFCL_v4_*.json")) + list((SHARED / "bfcl").glob("multi_turn_func_doc/*")):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                for doc in row.get("function") or ([row] if "name" in row else []):
                    names.add(doc["name"])
    legal = {re.sub(r"[^a-zA-Z0-9_-]", "_", n) for n in names}  # as the harness sends them
    return {n.lower() for n in names | legal | {n.split(".")[-1] for n in names}}


@needs_data
def test_full_mix_valid_and_no_bfcl_function_names(tmp_path):
    if not (SHARED / "bfcl").is_dir():
        pytest.skip("BFCL data not found at ../shared/data")
    rows = fc.generate_rows(200, seed=0)
    _check_rows(rows)
    bfcl = _bfcl_names()
    assert len(bfcl) > 500
    # every tool that can ever appear, not just the ones this sample drew
    every = {s.name for s in fc.SPECS + fc_specs_modifiers.SPECS} | {s.name for s in fc.nestful_sources(SHARED)}
    every |= {t["function"]["name"] for t in fc.metatool_tools(SHARED)}
    every |= {t["function"]["name"] for r in rows for t in r["tools"]}
    clash = sorted(n for n in every if n.lower() in bfcl)
    assert not clash, f"tool names shared with BFCL: {clash}"
    assert any(s.domain == "nestful" for s in fc.nestful_sources(SHARED))


def test_linked_values_and_rate_conventions():
    """A city and its country (or a US city and its state) are drawn as one pair; a rate under a
    plain description is a decimal, one "as a percentage" keeps the number the question says."""
    import random

    r = random.Random(0)
    spec = {s.name: fc.own_source(s) for s in fc.SPECS}
    states = {city: state for city, state, _ in US_CITIES}
    for _ in range(40):
        q, a = spec["clock_time_in_city"].sample(r)
        assert (a["city"], a["country"]) in CITY_COUNTRY and a["city"] in q
        q, a = spec["crime_stats_by_city"].sample(r)
        assert states[a["city"]] == a["state"] and a["city"] in q
        q, a = spec["investment_projection"].sample(r)
        assert 0 < a["annual_return"] < 1
        q, a = spec["deposit_growth_percent"].sample(r)
        assert a["interest"] >= 1 and f"{a['interest']:g}" in q
