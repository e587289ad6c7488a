"""Single-stream latency: one request at a time, the desktop and agent case.

    python benchmarks/latency.py                     # engine dtype auto (bf16 on AVX-512 BF16)
    python benchmarks/latency.py --dtype float32 --items 3

Workloads (each --items requests, greedy, run one by one):
  (a) free text: the base model continues prose for --max-tokens tokens;
  (b) extraction: `gemma-3-270m:extract-contact` on held-out texts of its own task;
  (c) tool calls: `gemma-3-270m:fc` on BFCL simple_python questions (tools grammar on);
  (d) json_schema: the extraction expert with a response_format schema.
Rows: the fleetlm engine plain, with n-gram speculative decoding, and with weight-only int8
(alone and with speculation) where the engine supports it; llama-cpp-python on the same
GGUF (speed anchor: it runs the base model on the same prompts, without adapters or
grammar; skipped with a message when not installed); transformers `generate` with
`prompt_lookup_num_tokens` (same dtype, adapters merged, no grammar).

Columns: TPOT p50 (ms per token after the first), TTFT p50, tokens per verification step
(1 + accepted drafts), and greedy outputs that differ from the plain engine's (must be 0
in fp32; bf16 rounding can flip a near-tie when a step's matmul is wider).
Writes benchmarks/results/latency.txt. The last line is
`speculative TPOT speedup on tool calls: N.NNx`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
EXPERTS = REPO / "experts"
PROSE = [
    "The history of the printing press begins in the fifteenth century, when",
    "In the mountains of northern Spain, the small village of",
    "A good recipe for bread needs only four ingredients:",
    "The committee met on Tuesday to discuss the new budget, and",
    "When the first railways were built across the continent,",
]


@dataclass
class Work:
    name: str
    ids: list[list[int]]  # prompts (token ids)
    params: list  # SamplingParams per prompt
    adapter: str | None  # expert folder name under experts/, or None: the base model


@dataclass
class Row:
    name: str
    tpot: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    outputs: list[list[int]] = field(default_factory=list)
    per_step: float | None = None  # tokens per verification step
    note: str = ""


def workloads(engine, items: int, max_tokens: int) -> list[Work]:
    sys.path.insert(0, str(Path(__file__).parent))
    from auto_router import bfcl_items, extract_items

    from fleetlm.backends.local_inputs import EngineInputs
    from fleetlm.engine.sampling_params import SamplingParams
    from fleetlm.openai.protocol import ChatCompletionRequest

    inputs = EngineInputs(engine)

    def chat(body: dict):
        got = inputs.chat(ChatCompletionRequest.model_validate({"model": "x", **body}))
        return got.ids, got.params

    tok = engine.tokenizer
    free = Work("(a) free text", [tok(p).input_ids for p in PROSE[:items]],
                [SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)] * items, None)
    ext = [chat(i.body) for i in extract_items(items, 7, test=True)]
    extraction = Work("(b) extraction", [i for i, _ in ext], [p for _, p in ext], "extract-contact")
    fc = [chat(i.body) for i in bfcl_items(items)]
    tools = Work("(c) tool calls", [i for i, _ in fc], [p for _, p in fc], "fc")
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "city": {"type": "string"}, "job": {"type": "string"}},
              "required": ["name", "age", "city", "job"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    js = [chat({**i.body, "response_format": fmt}) for i in extract_items(items, 8, test=True)]
    structured = Work("(d) json_schema", [i for i, _ in js], [p for _, p in js], "extract-contact")
    return [free, extraction, tools, structured]


def run_engine(engine, work: Work) -> Row:
    """Each prompt alone: TTFT from add to the first token, TPOT over the rest."""
    from fleetlm.engine.lora import LoRARequest

    lora = LoRARequest(work.adapter, str(EXPERTS / work.adapter)) if work.adapter else None
    prop = engine.scheduler.proposer
    before = (prop.accepted, prop.verifications) if prop else (0, 0)
    row = Row(work.name)
    for ids, params in zip(work.ids, work.params):
        req = engine.make_request(ids, params, lora_request=lora)
        start = time.perf_counter()
        engine.add(req)
        first, out = None, None
        while engine.has_unfinished_requests():
            for out in engine.step():
                if first is None and out.outputs[0].token_ids:
                    first = time.perf_counter()
        end = time.perf_counter()
        n = len(out.outputs[0].token_ids)
        row.ttft.append(first - start)
        row.tpot.append((end - first) / max(n - 1, 1))
        row.outputs.append(out.outputs[0].token_ids)
    if prop:
        acc, ver = prop.accepted - before[0], prop.verifications - before[1]
        row.per_step = (acc + ver) / ver if ver else 1.0
    return row


def fleet_rows(args, quant: str | None, spec: bool) -> tuple[list[Row], list[Work]]:
    from fleetlm.config import EngineConfig
    from fleetlm.engine.engine import LLMEngine

    kw = dict(model="gemma-3-270m", dtype=args.dtype, enable_lora=True, max_num_seqs=4)
    if spec:
        kw.update(speculative="ngram", num_draft_tokens=args.num_draft_tokens)
    if quant:
        kw["quantization"] = quant
    engine = LLMEngine(EngineConfig(**kw))
    works = workloads(engine, args.items, args.max_tokens)
    run_engine(engine, Work("warm-up", works[0].ids[:1], works[0].params[:1], None))
    return [run_engine(engine, w) for w in works], works


def batch_throughput(args, spec: bool, quant: str | None = None) -> float:
    """Output tok/s for 64 free-text requests arriving at once (speculation pauses above
    speculative_max_batch rows, so this should match the plain engine)."""
    from fleetlm.engine.llm import LLM
    from fleetlm.engine.sampling_params import SamplingParams

    kw = dict(speculative="ngram", num_draft_tokens=args.num_draft_tokens) if spec else {}
    if quant:
        kw["quantization"] = quant
    llm = LLM("gemma-3-270m", dtype=args.dtype, **kw)
    prompts = [PROSE[i % len(PROSE)] + f" (part {i})" for i in range(64)]
    params = SamplingParams(max_tokens=args.batch_tokens, temperature=0, ignore_eos=True)
    llm.generate(prompts[:2], params)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start)


def llama_cpp_rows(works: list[Work], engine_tok, lengths: list[list[int]]) -> list[Row] | str:
    try:
        from llama_cpp import Llama
    except ImportError:
        return "llama-cpp-python is not installed (pip install llama-cpp-python): row skipped"
    import importlib

    from fleetlm.models.embedded import _GGUF_MODULE, default_cache_dir

    path = default_cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        importlib.import_module(_GGUF_MODULE).assemble(path)
    llm = Llama(model_path=str(path), n_threads=2, n_ctx=2048, verbose=False)
    rows = []
    for work, lens in zip(works, lengths):
        row = Row(work.name, note="base model, no grammar")
        for ids, n in zip(work.ids, lens):
            start = time.perf_counter()
            first, count = None, 0
            # the same prompt ids (same vocabulary), as many tokens as the plain engine made
            for _ in llm.generate(ids, temp=0.0, reset=True):
                count += 1
                if first is None:
                    first = time.perf_counter()
                if count >= max(n, 2):
                    break
            end = time.perf_counter()
            row.ttft.append(first - start)
            row.tpot.append((end - first) / max(count - 1, 1))
        rows.append(row)
    return rows


def hf_rows(args, works: list[Work], lengths: list[list[int]]) -> list[Row]:
    import torch
    from transformers import AutoModelForCausalLM

    from fleetlm.engine.loader import resolve_dtype
    from fleetlm.models.embedded import resolve_model_path

    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    path = resolve_model_path("gemma-3-270m")
    rows = []
    for work, lens in zip(works, lengths):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        if work.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, EXPERTS / work.adapter).merge_and_unload()
        row = Row(work.name, note="adapters merged, no grammar")
        for ids, n in zip(work.ids, lens):
            x = torch.tensor([ids])
            kw = dict(do_sample=False, pad_token_id=0, prompt_lookup_num_tokens=args.num_draft_tokens)
            with torch.inference_mode():
                t0 = time.perf_counter()
                model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
                t1 = time.perf_counter()
                out = model.generate(x, max_new_tokens=max(n, 2), min_new_tokens=max(n, 2), **kw)
                t2 = time.perf_counter()
            made = out.shape[1] - len(ids)
            row.ttft.append(t1 - t0)
            row.tpot.append(((t2 - t1) - (t1 - t0)) / max(made - 1, 1))  # generate's time less one prefill
        rows.append(row)
    return rows


def p50(xs: list[float]) -> float:
    return statistics.median(xs) * 1000 if xs else float("nan")


def table(results: dict[str, list[Row] | str], plain: list[Row]) -> list[str]:
    lines = [f"{'engine':<26} {'workload':<17} {'TPOT p50 ms':>11} {'tok/s':>7} {'TTFT p50 ms':>11} "
             f"{'tok/verify':>10} {'mismatch':>8}  note"]
    for name, rows in results.items():
        if isinstance(rows, str):
            lines.append(f"{name:<26} {rows}")
            continue
        for row, ref in zip(rows, plain):
            mism = sum(a != b for a, b in zip(row.outputs, ref.outputs)) if row.outputs else None
            per = f"{row.per_step:.2f}" if row.per_step is not None else "-"
            tpot = p50(row.tpot)
            lines.append(f"{name:<26} {row.name:<17} {tpot:>11.1f} {1000 / tpot:>7.1f} {p50(row.ttft):>11.1f} "
                         f"{per:>10} {'-' if mism is None else mism:>8}  {row.note}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=5, help="requests per workload")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens per free-text request")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--num-draft-tokens", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=64, help="tokens per request in the 64-request run")
    ap.add_argument("--skip", nargs="*", default=[], choices=["int8", "llama-cpp", "transformers", "batch"])
    ap.add_argument("--out", default=str(RESULTS / "latency.txt"))
    args = ap.parse_args()

    from fleetlm.config import EngineConfig

    results: dict[str, list[Row] | str] = {}
    plain, works = fleet_rows(args, None, False)
    results["fleetlm plain"] = plain
    results["fleetlm speculative"] = fleet_rows(args, None, True)[0]
    if "int8" not in args.skip:
        if "quantization" in EngineConfig.__dataclass_fields__:
            results["fleetlm int8"] = fleet_rows(args, "int8", False)[0]
            results["fleetlm int8 + speculative"] = fleet_rows(args, "int8", True)[0]
        else:
            results["fleetlm int8"] = "this engine has no weight-only quantization: row skipped"
    lengths = [[len(o) for o in row.outputs] for row in plain]
    if "llama-cpp" not in args.skip:
        results["llama-cpp-python Q4_K_M"] = llama_cpp_rows(works, None, lengths)
    if "transformers" not in args.skip:
        results["transformers prompt-lookup"] = hf_rows(args, works, lengths)

    import torch

    from fleetlm.engine.loader import cpu_has_fast_bf16, resolve_dtype

    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    head = [f"# single-stream latency, {time.strftime('%Y-%m-%d')}, gemma-3-270m, engine dtype {dtype}, "
            f"{torch.get_num_threads()} threads, {'AVX-512 BF16' if cpu_has_fast_bf16() else 'no AVX-512 BF16'}",
            f"# {args.items} requests per workload, greedy, one at a time; drafts up to {args.num_draft_tokens}"]
    spec = results["fleetlm speculative"]
    speedup = p50(plain[2].tpot) / p50(spec[2].tpot)
    lines = head + table(results, plain)
    if "batch" not in args.skip:
        plain_tps, spec_tps = batch_throughput(args, False), batch_throughput(args, True)
        lines.append(f"64 concurrent requests x {args.batch_tokens} tokens: plain {plain_tps:.1f} tok/s, "
                     f"speculative {spec_tps:.1f} tok/s ({spec_tps / plain_tps:.2f}x)")
    lines.append(f"speculative TPOT speedup on tool calls: {speedup:.2f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
