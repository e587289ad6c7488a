"""`fleet` command line. Subcommands parse their flags here and call into the package;
no work happens at import.

    fleet generate --prompt "The capital of France is"     # stream a completion
    fleet generate --chat --prompt "Hi"                     # wrap in the model's chat template
"""

from __future__ import annotations

import argparse
import sys
import time

from fleetlm.config import EngineConfig


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gemma-3-270m", help="embedded model id or a local HF folder")
    p.add_argument("--dtype", default="auto", help="auto | bfloat16 | float32 (auto: bf16 where fast)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="where the embedded model is unpacked "
                                                     "(default $FLEETLM_CACHE_DIR or ~/.cache/fleetlm)")


def _engine_config(args) -> EngineConfig:
    return EngineConfig(model=args.model, dtype=args.dtype, device=args.device,
                        max_model_len=args.max_model_len, cache_dir=args.cache_dir)


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
    return 0


def cmd_serve(args) -> int:
    import os

    from fleetlm.api.server import serve
    from fleetlm.config import ServerConfig

    engine = _engine_config(args)
    engine.max_num_seqs = args.max_num_seqs
    engine.max_num_batched_tokens = args.max_num_batched_tokens
    server = ServerConfig(host=args.host, port=args.port,
                          api_key=args.api_key or os.environ.get("FLEETLM_API_KEY") or None,
                          served_model_name=args.served_model_name,
                          max_pending_requests=args.max_pending_requests,
                          enable_embeddings=not args.no_embeddings)
    serve(engine, server)
    return 0


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
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("serve", help="start the OpenAI-compatible server")
    _engine_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require this bearer token (or set FLEETLM_API_KEY)")
    s.add_argument("--served-model-name", default=None)
    s.add_argument("--max-num-seqs", type=int, default=64)
    s.add_argument("--max-num-batched-tokens", type=int, default=512)
    s.add_argument("--max-pending-requests", type=int, default=256)
    s.add_argument("--no-embeddings", action="store_true", help="do not load all-MiniLM-L6-v2")
    s.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
