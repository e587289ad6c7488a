"""Structured output: grammars compiled by `GrammarCompiler`, enforced by `GrammarMatcher` and
`apply_masks`.

The main check drives a matcher the way the sampler will, but with a random "model": each
step it draws uniformly from the allowed tokens (fixed seed), leaning towards closing tokens
as the document grows so it ends, and asserts that the decoded text parses and validates
against the schema. Fast tests use the tiny byte-level tokenizer; `slow` ones use the real
Gemma 3 tokenizer (262k ids, padded here to check that padding ids stay masked)."""

from __future__ import annotations

import json
import random
import re
import threading

import jsonschema
import pytest
import torch

from fleetlm.engine.errors import InvalidRequestError
from fleetlm.engine.structured import (
    GrammarCompiler,
    GrammarError,
    GrammarStateError,
    StructuredOutput,
    apply_masks,
)
from tests.tiny_models import VOCAB, byte_tokenizer

PAD_IDS = 64  # model-only ids past the Gemma tokenizer
GEMMA_EOS = [1, 106]  # <eos>, <end_of_turn>
CLOSERS = set('"]}')

SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "note": {"type": "string"},
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {"role": {"enum": ["admin", "user", "guest"]}, "level": {"const": 3},
                       "mode": {"type": "string", "enum": ["fast", "slow"]},
                       "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
        "required": ["role", "level", "code"],
        "additionalProperties": False,
    },
    "array": {
        "type": "object",
        "properties": {
            "ids": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 4},
            "points": {"type": "array", "items": {
                "type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                "required": ["x", "y"], "additionalProperties": False}},
        },
        "required": ["ids", "points"],
        "additionalProperties": False,
    },
    "scalars": {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 0, "maximum": 1000},
            "ratio": {"type": "number"},
            "ok": {"type": "boolean"},
            "maybe": {"type": ["string", "null"]},
            "either": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
        },
        "required": ["count", "ratio", "ok"],
        "additionalProperties": False,
    },
    # OpenAI strict mode: every property required, no extra ones.
    "strict": {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"},
                       "sources": {"type": "array", "items": {"type": "string"}}},
        "required": ["answer", "confidence", "sources"],
        "additionalProperties": False,
    },
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Masks here are single 262k-wide rows: with a thread pool on a busy host, waiting for
    its workers costs ~100x the work (16 ms vs 0.2 ms per nonzero)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def schema_spec(schema: dict) -> StructuredOutput:
    return StructuredOutput.from_response_format(
        {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}})


def closer_ids(tokenizer) -> torch.Tensor:
    """Ids whose text is only closing characters (quotes, brackets, braces)."""
    ids = [i for i in range(len(tokenizer))
           if (text := tokenizer.decode([i])) and set(text) <= CLOSERS]
    return torch.tensor(ids)


def random_document(compiler: GrammarCompiler, spec: StructuredOutput, tokenizer, seed: int,
                    closers: torch.Tensor, max_steps: int = 400) -> str:
    """Samples a document from `spec`'s grammar, uniformly over the allowed tokens; after 20
    steps a growing share of draws is made among allowed closing tokens instead. Checks every
    mask on the way: never empty, never a padding id, no EOS before the document may end,
    only EOS once it is finished."""
    rng = random.Random(seed)
    m = compiler.matcher(spec)
    closing = torch.zeros(compiler.vocab_size, dtype=torch.bool)
    closing[closers] = True
    out: list[int] = []
    for step in range(max_steps):
        allowed = m.allowed_mask()
        ids = allowed.nonzero().flatten()
        assert len(ids), "empty mask"
        assert not allowed[len(tokenizer):].any(), "a padding id is allowed"
        if m.is_finished():
            assert sorted(ids.tolist()) == sorted(compiler.eos_token_ids)
            return tokenizer.decode(out)
        if not m.is_accepting():
            assert not allowed[compiler.eos_token_ids].any(), "EOS allowed before the end"
        close = (allowed & closing).nonzero().flatten()
        if len(close) and rng.random() < min(0.95, max(0.0, (step - 20) / 60)):
            ids = close
        tok = int(ids[rng.randrange(len(ids))])
        if tok in compiler.eos_token_ids:  # the grammar let the document end here
            return tokenizer.decode(out)
        m.accept(tok)
        out.append(tok)
    raise AssertionError(f"no complete document in {max_steps} steps: {tokenizer.decode(out)!r}")


def outside_strings(text: str) -> str:
    """The characters of a JSON text that are not inside string literals."""
    out, in_str, escaped = [], False, False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        else:
            out.append(ch)
    return "".join(out)


# ---- spec and errors (no tokenizer) -------------------------------------------------------


def test_spec_from_response_format():
    assert StructuredOutput.from_response_format(None) is None
    assert StructuredOutput.from_response_format({"type": "text"}) is None
    assert StructuredOutput.from_response_format({"type": "json_object"}) == StructuredOutput("json_object")
    spec = schema_spec({"type": "object", "properties": {"b": {}, "a": {}}})
    assert spec.kind == "json_schema"
    assert spec.schema == '{"type":"object","properties":{"b":{},"a":{}}}'  # order kept
    assert hash(spec) == hash(schema_spec({"type": "object", "properties": {"b": {}, "a": {}}}))
    with pytest.raises(GrammarError):
        StructuredOutput.from_response_format({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(GrammarError):
        StructuredOutput.from_response_format({"type": "yaml"})


@pytest.mark.parametrize("kind, schema", [("xml", None), ("json_object", "{}"), ("json_schema", None),
                                          ("regex", "")])
def test_bad_spec_is_an_invalid_request(kind, schema):
    with pytest.raises(GrammarError) as e:
        StructuredOutput(kind, schema)
    assert isinstance(e.value, InvalidRequestError)
    assert e.value.param == "response_format"


# ---- tiny byte-level tokenizer (fast) -----------------------------------------------------


@pytest.fixture(scope="module")
def byte_tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def byte_compiler(byte_tok):
    return GrammarCompiler(byte_tok, VOCAB, [byte_tok.eos_token_id])


@pytest.fixture(scope="module")
def byte_closers(byte_tok):
    return closer_ids(byte_tok)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_byte_tokenizer_documents_validate(byte_compiler, byte_tok, byte_closers, name):
    for seed in range(3):
        text = random_document(byte_compiler, schema_spec(SCHEMAS[name]), byte_tok, seed, byte_closers)
        assert not set(outside_strings(text)) & set(" \n\r\t"), text  # compact
        jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_byte_tokenizer_json_object(byte_compiler, byte_tok, byte_closers):
    for seed in range(5):
        text = random_document(byte_compiler, StructuredOutput("json_object"), byte_tok, seed, byte_closers)
        assert isinstance(json.loads(text), dict), text
        assert not set(outside_strings(text)) & set(" \n\r\t"), text


def test_regex_and_grammar(byte_compiler, byte_tok, byte_closers):
    for seed in range(5):
        text = random_document(byte_compiler, StructuredOutput("regex", r"[0-9]{3}-[a-z]{2,4}"), byte_tok,
                               seed, byte_closers)
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", text), text
        text = random_document(byte_compiler, StructuredOutput("grammar", 'start: "yes" | "no" | "n/a"'),
                               byte_tok, seed, byte_closers)
        assert text in ("yes", "no", "n/a")


def test_compact_json_no_free_whitespace(byte_compiler, byte_tok):
    m = byte_compiler.matcher(StructuredOutput("json_object"))
    for t in byte_tok.encode('{"a":1', add_special_tokens=False):
        m.accept(t)
    allowed = {byte_tok.decode([i]) for i in m.allowed_mask().nonzero().flatten().tolist()}
    assert {",", "}"} <= allowed and not allowed & {" ", "\n", "\t", "\r"}
    with pytest.raises(GrammarStateError):
        m.accept(byte_tok.encode(" ", add_special_tokens=False)[0])


def test_finished_allows_only_eos(byte_compiler, byte_tok):
    m = byte_compiler.matcher(StructuredOutput("json_object"))
    assert not m.allowed_mask()[byte_tok.eos_token_id]  # nothing yet: cannot end
    for t in byte_tok.encode('{"k":[true,null]}', add_special_tokens=False):
        assert not m.is_finished()
        m.accept(t)
    assert m.is_finished()
    assert m.allowed_mask().nonzero().flatten().tolist() == [byte_tok.eos_token_id]
    m.accept(byte_tok.eos_token_id)  # the sampler may accept the EOS it forced
    assert m.is_finished()


def test_accepting_but_not_finished(byte_compiler, byte_tok):
    m = byte_compiler.matcher(StructuredOutput("regex", "[0-9]+"))
    for t in byte_tok.encode("12", add_special_tokens=False):
        m.accept(t)
    mask = m.allowed_mask()
    assert m.is_accepting() and not m.is_finished()
    assert mask[byte_tok.eos_token_id] and mask[byte_tok.encode("3", add_special_tokens=False)[0]]
    m.accept(byte_tok.eos_token_id)
    assert m.is_finished()


def test_disallowed_token_raises(byte_compiler, byte_tok):
    m = byte_compiler.matcher(StructuredOutput("json_object"))
    with pytest.raises(GrammarStateError):
        m.accept(byte_tok.encode("x", add_special_tokens=False)[0])
    assert m.allowed_mask().nonzero().flatten().tolist() == [byte_tok.eos_token_id]  # dead: ends


def test_special_and_spare_ids_never_allowed(byte_compiler, byte_tok):
    m = byte_compiler.matcher(schema_spec({"type": "object", "properties": {"s": {"type": "string"}}}))
    for t in byte_tok.encode('{"s":"', add_special_tokens=False):
        m.accept(t)
    mask = m.allowed_mask()
    assert mask.shape == (VOCAB,)
    assert mask.sum() > 140  # inside a string: printable ASCII and UTF-8 lead bytes
    assert not mask[[byte_tok.pad_token_id, byte_tok.bos_token_id, byte_tok.eos_token_id]].any()
    assert not mask[len(byte_tok):].any()


@pytest.mark.parametrize("bad", [
    '{"type": "objekt"}',
    '{"type": "object", "properties": {"a": {"$ref": "#/nope"}}}',
    "not json",
    "[1, 2]",
    '{"type": "string", "pattern": "(unclosed"}',
    '{"type": "string", "format": "no-such-format"}',
])
def test_invalid_schema_raises_grammar_error(byte_compiler, bad):
    with pytest.raises(GrammarError) as e:
        byte_compiler.compile(StructuredOutput("json_schema", bad))
    assert e.value.param == "response_format" and "invalid JSON schema" in str(e.value)


@pytest.mark.parametrize("spec", [StructuredOutput("regex", "(a"), StructuredOutput("grammar", "start: foo("),
                                  StructuredOutput("grammar", "nonsense")])
def test_invalid_regex_or_grammar_raises(byte_compiler, spec):
    with pytest.raises(GrammarError):
        byte_compiler.compile(spec)


def test_compile_cache(byte_tok):
    compiler = GrammarCompiler(byte_tok, VOCAB, [byte_tok.eos_token_id], cache_size=2)
    a, b, c = (StructuredOutput("regex", r) for r in ("a+", "b+", "c+"))
    ca = compiler.compile(a)
    assert compiler.compile(StructuredOutput("regex", "a+")) is ca  # equal spec, same object
    cb = compiler.compile(b)
    compiler.compile(a)  # a is now the most recent
    compiler.compile(c)  # evicts b
    assert compiler.compile(a) is ca
    assert compiler.compile(b) is not cb
    # matchers from one compiled grammar are independent
    m1, m2 = compiler.matcher(a), compiler.matcher(a)
    m1.accept(byte_tok.encode("a", add_special_tokens=False)[0])
    assert m1.is_accepting() and not m2.is_accepting()


def test_compile_from_another_thread(byte_compiler, byte_tok):
    spec = StructuredOutput("regex", "[xyz]{2}")
    errors = []
    threads = [threading.Thread(target=lambda: errors.append(byte_compiler.compile(spec))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in errors}) == 1
    m = byte_compiler.matcher(spec)
    for t in byte_tok.encode("xz", add_special_tokens=False):
        m.accept(t)
    assert m.is_finished()


@pytest.mark.parametrize("mask_threads", [1, 2])
def test_apply_masks(byte_tok, mask_threads):
    compiler = GrammarCompiler(byte_tok, VOCAB, [byte_tok.eos_token_id], mask_threads=mask_threads)
    matchers = [compiler.matcher(StructuredOutput("json_object")), None,
                compiler.matcher(schema_spec(SCHEMAS["scalars"])), None]
    for t in byte_tok.encode('{"a":', add_special_tokens=False):
        matchers[0].accept(t)
    expected_allowed = {i: m.allowed_mask() for i, m in enumerate(matchers) if m is not None}
    logits = torch.randn(4, VOCAB)
    before = logits.clone()
    apply_masks(logits, matchers)
    for i in range(4):
        if i in expected_allowed:
            ok = expected_allowed[i]
            assert torch.equal(logits[i][ok], before[i][ok])  # allowed: exact values
            assert (logits[i][~ok] == float("-inf")).all()
        else:
            assert torch.equal(logits[i], before[i])
    untouched = logits.clone()
    apply_masks(logits, [None] * 4)
    assert torch.equal(logits, untouched)
    all_rows = torch.randn(2, VOCAB)
    apply_masks(all_rows, matchers[0:1] + matchers[2:3])
    assert torch.equal(torch.isfinite(all_rows[0]), expected_allowed[0])
    with pytest.raises(ValueError):
        apply_masks(torch.randn(1, VOCAB + 1), matchers[:1])


# ---- real Gemma 3 tokenizer (slow) --------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_tok():
    from transformers import AutoTokenizer

    from fleetlm.models.embedded import ensure_default_model

    return AutoTokenizer.from_pretrained(ensure_default_model())


@pytest.fixture(scope="module")
def gemma_compiler(gemma_tok):
    return GrammarCompiler(gemma_tok, len(gemma_tok) + PAD_IDS, GEMMA_EOS)


@pytest.fixture(scope="module")
def gemma_closers(gemma_tok):
    return closer_ids(gemma_tok)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_gemma_documents_validate(gemma_compiler, gemma_tok, gemma_closers, name):
    for seed in range(2):
        text = random_document(gemma_compiler, schema_spec(SCHEMAS[name]), gemma_tok, seed, gemma_closers)
        jsonschema.validate(json.loads(text), SCHEMAS[name])
        assert not set(outside_strings(text)) & set(" \n\r\t"), text


@pytest.mark.slow
def test_gemma_json_object(gemma_compiler, gemma_tok, gemma_closers):
    for seed in range(3):
        text = random_document(gemma_compiler, StructuredOutput("json_object"), gemma_tok, seed, gemma_closers)
        assert isinstance(json.loads(text), dict), text
        assert not set(outside_strings(text)) & set(" \n\r\t"), text


@pytest.mark.slow
def test_gemma_real_tokenization_is_accepted(gemma_compiler, gemma_tok):
    """The tokens the model would produce for a valid document pass, and the end is EOS-only."""
    schema = SCHEMAS["strict"]
    doc = {"answer": "Paris, of course.\nIt's \"the\" capital — café ☕", "confidence": 0.97,
           "sources": ["wiki", "atlas"]}
    m = gemma_compiler.matcher(schema_spec(schema))
    for t in gemma_tok.encode(json.dumps(doc, separators=(",", ":"), ensure_ascii=False), add_special_tokens=False):
        assert m.allowed_mask()[t], gemma_tok.decode([t])
        m.accept(t)
    assert m.is_finished()
    assert m.allowed_mask().nonzero().flatten().tolist() == GEMMA_EOS


@pytest.mark.slow
def test_gemma_control_tokens_never_allowed(gemma_compiler, gemma_tok):
    m = gemma_compiler.matcher(schema_spec({"type": "object", "properties": {"s": {"type": "string"}}}))
    for t in gemma_tok.encode('{"s":"', add_special_tokens=False):
        m.accept(t)
    mask = m.allowed_mask()
    assert mask.sum() > 200_000  # inside a string
    control = gemma_tok.convert_tokens_to_ids(["<pad>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<unused0>"])
    assert not mask[control].any()
    assert not mask[len(gemma_tok):].any()


@pytest.mark.slow
def test_gemma_apply_masks_matches_allowed_mask(gemma_compiler, gemma_tok):
    spec = schema_spec(SCHEMAS["nested"])
    matchers = [gemma_compiler.matcher(spec), None, gemma_compiler.matcher(StructuredOutput("json_object"))]
    for t in gemma_tok.encode('{"name":"Ada', add_special_tokens=False):
        matchers[0].accept(t)
    logits = torch.randn(3, gemma_compiler.vocab_size)
    before = logits.clone()
    apply_masks(logits, matchers)
    for i in (0, 2):
        assert torch.equal(torch.isfinite(logits[i]), matchers[i].allowed_mask())
    assert torch.equal(logits[1], before[1])
