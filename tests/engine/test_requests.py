"""Request lifecycle through the engine: stop strings and tokens, EOS, max_tokens and the
context limit, n > 1 completions, abort, input validation, and incremental detokenization."""

from __future__ import annotations

import pytest

from fleetlm import LLM, SamplingParams
from fleetlm.config import EngineConfig
from fleetlm.engine.detokenizer import IncrementalDetokenizer
from fleetlm.engine.errors import InvalidRequestError, PromptTooLongError

PROMPT = "Hello world"
SEEDED = dict(temperature=1.0, seed=3, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_gemma):
    return LLM(str(tiny_gemma), dtype="float32")


@pytest.fixture(scope="module")
def seeded(llm) -> dict:
    """SEEDED with the first seed from 3 whose completion holds a usable stop string: a random
    model samples mostly invalid UTF-8, and what a seed samples depends on the device's RNG."""
    for seed in range(3, 64):
        params = {**SEEDED, "seed": seed}
        if find_stop_string(llm.generate(PROMPT, SamplingParams(**params))[0].outputs[0].text):
            return params
    raise AssertionError("no seed in 3..63 samples a usable stop string")


@pytest.fixture(scope="module")
def ref(llm, seeded):
    """A seeded reference completion that later tests cut short in different ways."""
    out = llm.generate(PROMPT, SamplingParams(**seeded))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 24
    return out


def first_new(tokens: list[int], start: int) -> int:
    """Index >= start of the first token that does not occur earlier."""
    return next(i for i in range(start, len(tokens)) if tokens[i] not in tokens[:i])


def find_stop_string(text: str) -> tuple[int, str] | None:
    """A 3-character substring of text (no U+FFFD), first occurring at its index >= 2."""
    for i in range(2, len(text) - 3):
        s = text[i : i + 3]
        if "\ufffd" not in s and text.find(s) == i:
            return i, s
    return None


def stop_string_in(text: str) -> tuple[int, str]:
    found = find_stop_string(text)
    assert found is not None, f"no usable stop string in {text!r}"
    return found


def idle(engine) -> bool:
    return not engine.requests and not engine.scheduler.waiting and not engine.scheduler.running


# ---- stop conditions -------------------------------------------------------------------

@pytest.mark.parametrize("include", [False, True])
def test_stop_string_cuts_the_text(llm, ref, seeded, include):
    at, stop = stop_string_in(ref.text)
    assert len(llm.tokenizer(stop, add_special_tokens=False).input_ids) >= 2  # spans several tokens
    params = SamplingParams(**seeded, stop=["\x00never\x00", stop], include_stop_str_in_output=include)
    out = llm.generate(PROMPT, params)[0].outputs[0]
    assert out.text == ref.text[: at + len(stop) if include else at]
    assert (out.finish_reason, out.stop_reason) == ("stop", stop)
    n = len(out.token_ids)
    assert out.token_ids == ref.token_ids[:n] and n < 24
    assert stop in llm.tokenizer.decode(out.token_ids) and stop not in llm.tokenizer.decode(out.token_ids[:-1])


def test_stop_string_is_never_streamed(llm, ref, seeded):
    at, stop = stop_string_in(ref.text)
    engine = llm.engine
    engine.add(engine.make_request(PROMPT, SamplingParams(**seeded, stop=[stop]), request_id="stream"))
    texts = []
    while engine.has_unfinished_requests():
        texts += [o.outputs[0].text for o in engine.step()]
    assert texts[-1] == ref.text[:at]
    assert len(texts) > 3
    # each streamed text is a prefix of the final one: no part of the stop string ever showed
    assert all(ref.text[:at].startswith(t) for t in texts)


def test_stop_token_ids(llm, ref, seeded):
    k = first_new(ref.token_ids, 3)
    out = llm.generate(PROMPT, SamplingParams(**seeded, stop_token_ids=[ref.token_ids[k]]))[0].outputs[0]
    assert out.token_ids == ref.token_ids[: k + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", ref.token_ids[k])


def test_stop_token_text_is_left_out(llm, ref, seeded):
    k = first_new(ref.token_ids, 3)
    while not llm.tokenizer.decode(ref.token_ids[k : k + 1]):  # a token with visible text
        k = first_new(ref.token_ids, k + 1)
    params = SamplingParams(**seeded, stop_token_ids=[ref.token_ids[k]])
    out = llm.generate(PROMPT, params)[0].outputs[0]
    # the engine never emits part of a character: trailing bytes of an unfinished one, which
    # decode() shows as U+FFFD, are left out (what a seed samples depends on the device's RNG)
    assert out.text == llm.tokenizer.decode(ref.token_ids[:k]).rstrip("\ufffd")


def test_eos_stops_unless_ignored(llm, ref, seeded, monkeypatch):
    k = first_new(ref.token_ids, 3)
    monkeypatch.setattr(llm.engine.loaded, "eos_token_ids", [ref.token_ids[k]])
    out = llm.generate(PROMPT, SamplingParams(**{**seeded, "ignore_eos": False}))[0].outputs[0]
    assert out.token_ids == ref.token_ids[: k + 1]
    assert (out.finish_reason, out.stop_reason) == ("stop", None)
    out = llm.generate(PROMPT, SamplingParams(**seeded))[0].outputs[0]
    assert out.token_ids == ref.token_ids and out.finish_reason == "length"


@pytest.mark.parametrize("max_tokens", [1, 5])
def test_max_tokens_gives_length_and_the_exact_count(llm, max_tokens):
    outs = llm.generate([PROMPT, "abc"], SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    for o in outs:
        assert len(o.outputs[0].token_ids) == max_tokens and o.outputs[0].finish_reason == "length"
        assert o.finished


def test_max_tokens_is_clamped_by_the_context(tiny_gemma):
    small = LLM(str(tiny_gemma), dtype="float32", max_model_len=32)
    prompts = [[2] + list(range(3, 3 + n - 1)) for n in (28, 31)]
    for max_tokens in (100, None):
        outs = small.generate(prompt_token_ids=prompts,
                              sampling_params=SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
        assert [len(o.outputs[0].token_ids) for o in outs] == [4, 1]
        assert all(o.outputs[0].finish_reason == "length" for o in outs)
    with pytest.raises(PromptTooLongError) as err:
        small.generate(prompt_token_ids=[[2] * 32])
    assert (err.value.prompt_tokens, err.value.max_model_len) == (32, 32)
    assert "32" in str(err.value)
    assert small.engine.kv.num_free_blocks == small.engine.kv.num_blocks and idle(small.engine)


# ---- n > 1 -----------------------------------------------------------------------------

def test_n_completions_are_indexed_and_reproducible(llm):
    params = SamplingParams(n=3, **SEEDED)
    first = llm.generate(PROMPT, params)[0]
    again = llm.generate(PROMPT, params)[0]
    assert [c.index for c in first.outputs] == [0, 1, 2]
    assert [c.text for c in first.outputs] == [c.text for c in again.outputs]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert len({tuple(c.token_ids) for c in first.outputs}) == 3
    greedy = llm.generate(PROMPT, SamplingParams(n=2, temperature=0, max_tokens=6, ignore_eos=True))[0]
    assert greedy.outputs[0].token_ids == greedy.outputs[1].token_ids


def test_n_siblings_share_the_prompt_blocks(tiny_gemma):
    engine = LLM(str(tiny_gemma), dtype="float32", block_size=4).engine
    prompt = [2] + list(range(10, 39))  # 30 tokens: 7 full blocks before the last token
    req = engine.make_request(prompt, SamplingParams(n=3, temperature=1.0, seed=1, max_tokens=5, ignore_eos=True))
    engine.add(req)
    shared = None
    while engine.has_unfinished_requests():
        engine.step()
        if shared is None and all(s.block_ids for s in req.seqs):
            shared = [s.block_ids[:7] for s in req.seqs]
    assert shared[0] == shared[1] == shared[2]
    assert [s.num_cached_prompt_tokens for s in req.seqs] == [0, 28, 28]
    assert engine.kv.hits == 56
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


# ---- abort -----------------------------------------------------------------------------

def test_abort_frees_every_block_at_once(tiny_gemma):
    engine = LLM(str(tiny_gemma), dtype="float32", block_size=4).engine
    total = engine.kv.num_blocks
    greedy = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    keep_prompt = [2] + list(range(100, 125))
    engine.add(engine.make_request([2] + list(range(50, 70)), greedy, request_id="a"))
    engine.add(engine.make_request(keep_prompt, greedy, request_id="keep"))
    engine.add(engine.make_request([2] + list(range(150, 160)),
                                   SamplingParams(n=3, max_tokens=40, seed=0, ignore_eos=True), request_id="n3"))
    for _ in range(6):
        engine.step()
    a_blocks = len(engine.requests["a"].seqs[0].block_ids)
    assert a_blocks > 0
    free = engine.kv.num_free_blocks
    out = engine.abort("a")
    assert out.finished and out.outputs[0].finish_reason == "abort" and 0 < len(out.outputs[0].token_ids) < 40
    assert engine.kv.num_free_blocks == free + a_blocks
    assert "a" not in engine.requests and engine.abort("a") is None
    engine.step()
    out = engine.abort("n3")
    assert [c.finish_reason for c in out.outputs] == ["abort"] * 3
    rest = []
    while engine.has_unfinished_requests():
        rest += engine.step()
    assert engine.kv.num_free_blocks == total and idle(engine)
    alone = LLM(str(tiny_gemma), dtype="float32").generate(prompt_token_ids=[keep_prompt], sampling_params=greedy)
    assert rest[-1].outputs[0].token_ids == alone[0].outputs[0].token_ids  # the survivor is unaffected


def test_abort_mid_generation_returns_every_block(tiny_gemma):
    engine = LLM(str(tiny_gemma), dtype="float32", block_size=4).engine
    for i in range(4):
        engine.add(engine.make_request([2] + list(range(3 + 20 * i, 23 + 20 * i)),
                                       SamplingParams(max_tokens=100, n=1 + i % 2, seed=i, ignore_eos=True)))
    for _ in range(3):
        engine.step()
    assert engine.kv.num_free_blocks < engine.kv.num_blocks
    for rid in list(engine.requests):
        engine.abort(rid)
    assert engine.kv.num_free_blocks == engine.kv.num_blocks and idle(engine)
    assert engine.step() == []


# ---- validation before queueing ---------------------------------------------------------

BAD_REQUESTS = {
    "empty text": (dict(prompts=[""]), InvalidRequestError, "prompt"),
    "empty ids": (dict(prompt_token_ids=[[]]), InvalidRequestError, "prompt"),
    "one bad among good": (dict(prompts=["fine", ""]), InvalidRequestError, "prompt"),
    "id past vocab": (dict(prompt_token_ids=[[2, 5], [2, 264]]), InvalidRequestError, "prompt"),
    "negative id": (dict(prompt_token_ids=[[2, -1]]), InvalidRequestError, "prompt"),
    "too long": (dict(prompt_token_ids=[[2] * 512]), PromptTooLongError, "prompt"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_raises_before_anything_is_queued(llm, case):
    kwargs, exc, param = BAD_REQUESTS[case]
    with pytest.raises(exc) as err:
        llm.generate(**kwargs, sampling_params=SamplingParams(max_tokens=2))
    assert err.value.param == param
    assert idle(llm.engine) and llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_prompt_too_long_reports_both_counts(llm):
    with pytest.raises(PromptTooLongError) as err:
        llm.engine.make_request([2] * 600)
    assert (err.value.prompt_tokens, err.value.max_model_len) == (600, 512)
    assert "600" in str(err.value) and "512" in str(err.value)
    llm.engine.make_request([2] * 511)  # one token of room is enough


@pytest.mark.parametrize("kw, param", [
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=-3), "max_tokens"), (dict(n=0), "n"),
    (dict(temperature=-0.1), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_k=-2), "top_k"),
    (dict(min_p=1.5), "min_p"), (dict(logprobs=21), "logprobs"), (dict(stop=[""]), "stop"),
])
def test_bad_sampling_params_are_typed_errors(kw, param):
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kw)
    assert err.value.param == param
    with pytest.raises(InvalidRequestError):
        SamplingParams.from_dict(kw)


def test_unknown_fields_are_errors(tiny_gemma):
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams.from_dict({"temperature": 0.5, "best_of": 2})
    assert err.value.param == "best_of" and "best_of" in str(err.value)
    assert SamplingParams.from_dict({"temperature": 0.5, "top_k": -1}).top_k == 0
    with pytest.raises(ValueError, match="max_batch_size"):
        EngineConfig.from_dict({"model": str(tiny_gemma), "max_batch_size": 8})
    with pytest.raises(ValueError, match="blocksize"):
        LLM(str(tiny_gemma), dtype="float32", blocksize=8)


# ---- incremental detokenization --------------------------------------------------------

TEXT = "héllo 世界 🙂!"


def stream(tokenizer, prompt_ids, ids, stop=(), include=False):
    detok = IncrementalDetokenizer(tokenizer.backend_tokenizer, prompt_ids, skip_special_tokens=True,
                                   stop=list(stop), include_stop=include)
    texts, hit = [], None
    for t in ids:
        hit = detok.add(t)
        texts.append(detok.visible_text(hit is not None))
        if hit:
            break
    return texts, hit, detok


@pytest.mark.parametrize("prompt", ["", "x世界", "ab🙂"])
def test_streamed_text_never_splits_a_character(llm, prompt):
    tok = llm.tokenizer
    ids = tok(TEXT, add_special_tokens=False).input_ids
    assert len(ids) == len(TEXT.encode())  # one token per byte: multi-byte chars span 2-4 tokens
    prompt_ids = tok(prompt).input_ids  # <bos> + bytes; the last 5 may start mid-character
    texts, hit, _ = stream(tok, prompt_ids, ids)
    assert hit is None
    assert all("\ufffd" not in t for t in texts)
    for a, b in zip(texts, texts[1:]):
        assert b.startswith(a)
    assert texts[-1] == tok.decode(ids) == TEXT
    assert len(set(texts)) == len(TEXT)  # a new visible state once per character


@pytest.mark.parametrize("include", [False, True])
def test_multibyte_stop_string_is_held_back_and_cut(llm, include):
    tok = llm.tokenizer
    ids = tok(TEXT, add_special_tokens=False).input_ids
    texts, hit, detok = stream(tok, [2], ids, stop=["世界"], include=include)
    assert hit == "世界"
    assert texts[-1] == ("héllo 世界" if include else "héllo ")
    assert all("世" not in t for t in texts[:-1])  # a possible stop prefix is never streamed
    assert all("\ufffd" not in t for t in texts)
