"""Grammar backends for constrained decoding, measured on the real Gemma 3 tokenizer.

    python benchmarks/grammar_backends.py            # both libraries, ~1 min
    python benchmarks/grammar_backends.py --reps 5   # fewer walks per grammar

For llguidance and xgrammar, on the gemma-3-270m tokenizer (262,144 ids; the model's vocab
is padded to 262,208 here to check that padding ids stay masked), it measures:

* tokenizer-info construction (once per engine);
* compile time of (a) json_object (`{"type": "object"}`), (b) a moderately complex schema
  (nested objects, arrays of objects, enums, a pattern, required and optional fields), (c) the
  same schema again (the library's own cache, where it has one), and the cost of a new
  per-request matcher from an already compiled grammar (what a request pays on our LRU hit);
* the first mask after compiling (work a library defers from compile to the first step: it
  lands on time-to-first-token too);
* per-token cost while walking the Gemma tokens of a valid document: fill a next-token
  bitmask (int32, 32 ids per word), accept the token; mean and p99 over all steps of all
  walks. The first walk of a fresh grammar ("cold") is reported apart from later walks
  ("warm"), since a library may build lexer/mask caches lazily;
* one batched step: fill the bitmasks of 8 matchers with the library's batch API, and the
  same 8 one after another.

Both libraries get the same compact-JSON settings (no free whitespace, separators "," and
":"), the same EOS ids (1 <eos>, 106 <end_of_turn>), and every walk checks that the
document's tokens are accepted and the matcher ends complete. The table is printed and
written to benchmarks/results/grammar_backends.txt.

Results (2 CPU cores, llguidance 1.9.1, xgrammar 0.2.8, torch 2.13.0+cpu; see the results
file for the latest run):

                                            llguidance      xgrammar
    tokenizer info (s)                            2.59          0.68
    compile json_object (ms)                      0.81         26.79
      first mask after compile (ms)               0.13          0.18
    compile schema (ms)                           1.44         30.38
      first mask after compile (ms)               0.11          0.08
    compile schema again (ms)                     0.76          0.01
    new matcher from compiled (us)                 0.5           2.2
    schema: mask/token cold (us)                  12.2           7.1
    schema: mask/token warm (us)                   5.2           6.0
    schema: mask/token warm p99 (us)              14.7          23.2
    schema: accept/token (us)                      0.9           0.7
    schema: batch-8 mask/step (us)               115.6          38.3
      same, one matcher at a time (us)            35.7          78.5
    object: mask/token cold (us)                   8.8          14.4
    object: mask/token warm (us)                   5.6          13.3
    object: accept/token (us)                      1.1           0.8
    object: batch-8 mask/step (us)               119.5          95.8
      same, one matcher at a time (us)            18.7         163.5

    compile schema again: each library's own cache; llguidance has none, and fleetlm's LRU
    makes a repeat a dict lookup plus "new matcher". Timings on this shared 2-core host drift
    between runs: tokenizer info read 4.2 / 1.2 s and llguidance's warm schema mask 11 us
    (xgrammar 6 us) in a busier run; the compile and json_object mask gaps held in all four.

Decision: llguidance (fleetlm/engine/structured.py).

* Mask per token, the cost on every decode step, is a tie on the schema (5.2 vs 6.0 us mean
  warm) with a better tail for llguidance (p99 14.7 vs 23.2 us), and llguidance is 2.4x
  faster on json_object (5.6 vs 13.3 us). Either is noise next to a decode step, and next to
  applying the mask to 262k logits (88 us per row on CPU with the bias-add in structured.py).
  The first walk of a fresh schema is where xgrammar leads (7.1 vs 12.2 us/token): ~0.5 ms
  over a 100-token answer.
* Compile, paid on first-token latency for every new schema (tool lists make many), is 20-35x
  faster with llguidance: 0.8 / 1.4 ms vs 27 / 30 ms. Repeats are an LRU lookup either way.
* Batched masks: llguidance's thread pool loses on this 2-core host (116 us for 8 rows vs 36
  us one by one), so structured.py fills one by one by default; that matches xgrammar's
  batch API (38 us).
* Correctness on Gemma: xgrammar allows Gemma's control tokens (<pad>, <start_of_turn>, the
  6k <unusedN> ids) inside JSON strings as literal text, and ignores the compact separators
  inside schema-less objects (json_object forces ", " between members, hence its document is
  tokenized with ", " above). llguidance masks control tokens and keeps "," everywhere.
* Against llguidance: its tokenizer build is 2.6 s vs 0.7 s (~4 s on a busy host), once per
  engine, and can be done off the request path (GrammarCompiler.prepare). It also has no
  dependencies, where xgrammar pulls triton and apache-tvm-ffi (installed here with
  --no-deps for this benchmark only).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
EOS_IDS = [1, 106]  # <eos>, <end_of_turn>
PAD_VOCAB = 64  # extra model-only ids past the tokenizer (must always be masked)
BATCH = 8

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["street", "city"],
            "additionalProperties": False,
        },
        "orders": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "status": {"enum": ["pending", "shipped", "delivered"]},
                    "lines": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"sku": {"type": "string"},
                                           "qty": {"type": "integer", "minimum": 1}},
                            "required": ["sku", "qty"],
                            "additionalProperties": False,
                        },
                    },
                },
                "required": ["id", "status"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["name", "age", "role", "address"],
    "additionalProperties": False,
}

DOCUMENT = {
    "name": "Ada Lovelace",
    "age": 36,
    "role": "admin",
    "active": True,
    "score": 98.25,
    "tags": ["math", "engines", "poetry"],
    "address": {"street": "12 St James's Square", "city": "London", "zip": "10001"},
    "orders": [
        {"id": 1, "status": "shipped", "lines": [{"sku": "AE-1", "qty": 2}, {"sku": "BN-7", "qty": 1}]},
        {"id": 2, "status": "pending", "lines": [{"sku": "CX-3", "qty": 5}]},
    ],
}

OBJECT_SCHEMA = {"type": "object"}


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f}"


class Llguidance:
    name = "llguidance"
    object_separators = (",", ":")

    def __init__(self, tok, vocab: int):
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        t = time.perf_counter()
        self.lltok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab, eos_token=EOS_IDS)
        self.tokenizer_s = time.perf_counter() - t
        self.executor = llguidance.LLExecutor()
        self.version = llguidance.__version__

    def compile(self, schema: dict):
        g = self.llg.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False})
        m = self.llg.LLMatcher(self.lltok, g, log_level=0)
        assert not m.is_error(), m.get_error()
        return m  # a pristine matcher is llguidance's "compiled grammar"

    def compile_again(self, schema: dict):
        return self.compile(schema)  # no cache in the library

    def matcher(self, compiled):
        return compiled.deep_copy()

    def fill(self, m, row: torch.Tensor) -> None:
        m.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)

    def accept(self, m, token: int) -> None:
        assert m.consume_token(token), m.get_error()

    def done(self, m) -> bool:
        return m.is_accepting() and m.is_stopped()

    def fill_batch(self, ms, bitmask: torch.Tensor) -> None:
        self.executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(ms)],
                                              bitmask.data_ptr(), bitmask.shape[1] * 4, len(ms))


class Xgrammar:
    name = "xgrammar"
    # xgrammar 0.2.8 ignores `separators` inside schema-less ("any JSON") objects and arrays:
    # it hard-codes ", " there, so {"type": "object"} rejects '{"a":1,"b":2}'.
    object_separators = (", ", ":")

    def __init__(self, tok, vocab: int):
        import xgrammar

        self.xgr = xgrammar
        t = time.perf_counter()
        self.info = xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=vocab, stop_token_ids=EOS_IDS)
        self.tokenizer_s = time.perf_counter() - t
        self.compiler = xgrammar.GrammarCompiler(self.info)
        self.batch = xgrammar.BatchGrammarMatcher()
        from importlib.metadata import version

        self.version = version("xgrammar")

    def _compile(self, compiler, schema: dict):
        return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))

    def compile(self, schema: dict):
        # A cache-less compiler so repeated timings stay cold.
        return self._compile(self.xgr.GrammarCompiler(self.info, cache_enabled=False), schema)

    def compile_again(self, schema: dict):
        return self._compile(self.compiler, schema)  # the library's cache (warmed by the caller)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, m, row: torch.Tensor) -> None:
        m.fill_next_token_bitmask(row.view(1, -1))

    def accept(self, m, token: int) -> None:
        assert m.accept_token(token)

    def done(self, m) -> bool:
        return m.is_completed()

    def fill_batch(self, ms, bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(ms, bitmask)


def walk(backend, compiled, tokens: list[int], bitmask_row: torch.Tensor) -> tuple[list[float], list[float]]:
    """Steps a fresh matcher through `tokens`: (fill seconds per step, accept seconds per step).
    Checks each token is allowed by the mask it follows."""
    m = backend.matcher(compiled)
    fills, accepts = [], []
    for tid in tokens:
        t0 = time.perf_counter()
        backend.fill(m, bitmask_row)
        t1 = time.perf_counter()
        assert (int(bitmask_row[tid // 32]) >> (tid % 32)) & 1, f"{backend.name}: token {tid} masked"
        t2 = time.perf_counter()
        backend.accept(m, tid)
        t3 = time.perf_counter()
        fills.append(t1 - t0)
        accepts.append(t3 - t2)
    backend.fill(m, bitmask_row)
    assert backend.done(m), f"{backend.name}: document not complete"
    assert all((int(bitmask_row[e // 32]) >> (e % 32)) & 1 for e in EOS_IDS), "EOS not allowed at end"
    return fills, accepts


def p99(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(0.99 * len(xs)))]


def measure(backend, tok, vocab: int, reps: int) -> dict:
    words = (vocab + 31) // 32
    row = torch.zeros(words, dtype=torch.int32)
    out = {"tokenizer_s": backend.tokenizer_s}
    for label, schema, doc in (("object", OBJECT_SCHEMA, DOCUMENT), ("schema", SCHEMA, DOCUMENT)):
        seps = backend.object_separators if label == "object" else (",", ":")
        tokens = tok.encode(json.dumps(doc, separators=seps), add_special_tokens=False)
        times = []
        for _ in range(max(3, reps // 4)):
            gc.collect()
            t = time.perf_counter()
            compiled = backend.compile(schema)
            times.append(time.perf_counter() - t)
        out[f"{label}_compile_s"] = statistics.median(times)
        compiled = backend.compile(schema)
        m = backend.matcher(compiled)
        t = time.perf_counter()
        backend.fill(m, row)
        out[f"{label}_first_mask_s"] = time.perf_counter() - t
        if label == "schema":
            backend.compile_again(schema)  # warm the library cache
            times = []
            for _ in range(5):
                t = time.perf_counter()
                backend.compile_again(schema)
                times.append(time.perf_counter() - t)
            out["schema_again_s"] = statistics.median(times)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            backend.matcher(compiled)
            times.append(time.perf_counter() - t)
        out[f"{label}_matcher_s"] = statistics.median(times)
        # cold: first walk of a freshly compiled grammar; warm: later walks, fresh matchers.
        compiled = backend.compile(schema)
        cold_f, cold_a = walk(backend, compiled, tokens, row)
        warm_f, warm_a = [], []
        for _ in range(reps):
            f, a = walk(backend, compiled, tokens, row)
            warm_f += f
            warm_a += a
        out[f"{label}_tokens"] = len(tokens)
        out[f"{label}_cold_fill_us"] = statistics.mean(cold_f) * 1e6
        out[f"{label}_warm_fill_us"] = statistics.mean(warm_f) * 1e6
        out[f"{label}_warm_fill_p99_us"] = p99(warm_f) * 1e6
        out[f"{label}_accept_us"] = statistics.mean(warm_a) * 1e6
        # batched: BATCH matchers over the same document, one batched fill per step.
        bitmask = torch.zeros((BATCH, words), dtype=torch.int32)
        ms = [backend.matcher(compiled) for _ in range(BATCH)]
        steps, serial = [], []
        for tid in tokens:
            t = time.perf_counter()
            backend.fill_batch(ms, bitmask)
            steps.append(time.perf_counter() - t)
            assert all((int(bitmask[i, tid // 32]) >> (tid % 32)) & 1 for i in range(BATCH))
            t = time.perf_counter()
            for i, m in enumerate(ms):
                backend.fill(m, bitmask[i])
            serial.append(time.perf_counter() - t)
            for m in ms:
                backend.accept(m, tid)
        out[f"{label}_batch_fill_us"] = statistics.mean(steps) * 1e6
        out[f"{label}_serial_fill_us"] = statistics.mean(serial) * 1e6
    return out


def apply_cost(vocab: int, reps: int = 50) -> tuple[float, float]:
    """Seconds to apply one (1, words) int32 bitmask to (1, vocab) fp32 logits on CPU, two
    ways: unpack with shifts + masked_fill(-inf), and the 0/-inf bias looked up per byte and
    added (what fleetlm.engine.structured.apply_masks does). The same for both libraries:
    both write the same bit layout."""
    words = (vocab + 31) // 32
    bitmask = torch.randint(-2**31, 2**31 - 1, (1, words), dtype=torch.int32)
    logits = torch.randn(1, vocab)
    shifts = torch.arange(32, dtype=torch.int32)
    byte_bits = ((torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1).bool()
    table = torch.zeros(256, 8).masked_fill_(~byte_bits, float("-inf"))

    def masked_fill():
        allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(1, -1)[:, :vocab].bool()
        logits.masked_fill_(~allowed, float("-inf"))

    def bias_add():
        bias = torch.nn.functional.embedding(bitmask.view(torch.uint8).long(), table).view(1, -1)[:, :vocab]
        logits.add_(bias)

    out = []
    for fn in (masked_fill, bias_add):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out.append(statistics.median(times))
    return out[0], out[1]


ROWS = [
    ("tokenizer info (s)", lambda r: f"{r['tokenizer_s']:.2f}"),
    ("compile json_object (ms)", lambda r: _ms(r["object_compile_s"])),
    ("  first mask after compile (ms)", lambda r: _ms(r["object_first_mask_s"])),
    ("compile schema (ms)", lambda r: _ms(r["schema_compile_s"])),
    ("  first mask after compile (ms)", lambda r: _ms(r["schema_first_mask_s"])),
    ("compile schema again (ms)", lambda r: _ms(r["schema_again_s"])),
    ("new matcher from compiled (us)", lambda r: f"{r['schema_matcher_s'] * 1e6:.1f}"),
    ("schema: mask/token cold (us)", lambda r: f"{r['schema_cold_fill_us']:.1f}"),
    ("schema: mask/token warm (us)", lambda r: f"{r['schema_warm_fill_us']:.1f}"),
    ("schema: mask/token warm p99 (us)", lambda r: f"{r['schema_warm_fill_p99_us']:.1f}"),
    ("schema: accept/token (us)", lambda r: f"{r['schema_accept_us']:.1f}"),
    (f"schema: batch-{BATCH} mask/step (us)", lambda r: f"{r['schema_batch_fill_us']:.1f}"),
    ("  same, one matcher at a time (us)", lambda r: f"{r['schema_serial_fill_us']:.1f}"),
    ("object: mask/token cold (us)", lambda r: f"{r['object_cold_fill_us']:.1f}"),
    ("object: mask/token warm (us)", lambda r: f"{r['object_warm_fill_us']:.1f}"),
    ("object: accept/token (us)", lambda r: f"{r['object_accept_us']:.1f}"),
    (f"object: batch-{BATCH} mask/step (us)", lambda r: f"{r['object_batch_fill_us']:.1f}"),
    ("  same, one matcher at a time (us)", lambda r: f"{r['object_serial_fill_us']:.1f}"),
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20, help="warm walks per grammar")
    ap.add_argument("--only", choices=["llguidance", "xgrammar"],
                    help="measure one library (printed only; the results file keeps both)")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from fleetlm.models.embedded import ensure_default_model

    tok = AutoTokenizer.from_pretrained(ensure_default_model())
    vocab = len(tok) + PAD_VOCAB
    results, versions = {}, {}
    for cls in (Llguidance, Xgrammar):
        if args.only and cls.name != args.only:
            continue
        try:
            backend = cls(tok, vocab)
        except ImportError as e:  # xgrammar is not a fleetlm dependency
            print(f"skipping {cls.name}: {e}", file=sys.stderr)
            continue
        versions[cls.name] = backend.version
        results[cls.name] = measure(backend, tok, vocab, args.reps)
        del backend
        gc.collect()

    names = list(results)
    n_sch = results[names[0]]["schema_tokens"]
    lines = [
        f"grammar backends on the gemma-3-270m tokenizer (len {len(tok)}, mask vocab {vocab}); "
        f"document {n_sch} tokens; {args.reps} warm walks; {torch.get_num_threads()} torch threads",
        f"{platform.processor() or platform.machine()}, python {platform.python_version()}, torch {torch.__version__}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        f"{'':36}" + "".join(f"{n:>14}" for n in names),
    ]
    for label, fmt in ROWS:
        lines.append(f"{label:36}" + "".join(f"{fmt(results[n]):>14}" for n in names))
    lines += ["", "compile schema again: the library's own cache (llguidance has none; fleetlm's LRU "
                  "makes a repeat a dict lookup plus 'new matcher')."]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared box's thread-pool stalls would swamp a ~100 us op
    fill_s, add_s = apply_cost(vocab)
    torch.set_num_threads(threads)
    lines += [f"shared, applying one mask to (1, {vocab}) fp32 logits on 1 CPU thread: shift-unpack + "
                  f"masked_fill {fill_s * 1e6:.0f} us, byte-table bias + add {add_s * 1e6:.0f} us"]
    text = "\n".join(lines)
    print(text)
    if len(results) == 2:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "grammar_backends.txt").write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
