"""``fleet tune sft | distill | eval | datagen``.

    fleet tune sft --base gemma-3-270m --data train.jsonl --out adapters/NAME
    fleet tune distill --base gemma-3-270m --system-prompt PROMPT.txt --queries Q.jsonl --out adapters/NAME
    fleet tune eval --task extract --test test.jsonl --adapter adapters/NAME --shots-from train.jsonl
    fleet tune datagen extract --out data/extract

``add_tune_parser(subparsers)`` adds the ``tune`` command to the ``fleet`` parser; each
subcommand sets ``func`` (``args.func(args) -> exit code``). Bad data or arguments print one
``error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from fleetlm.config import default_of, given

# The dataclasses behind the flags, where their defaults live. trainer, sft and distill import
# torch, so they are imported only to run a command or to print its help (`_DefaultsHelp`),
# never while `fleet` builds its parser.
_DATACLASSES = {"LoraParams": "fleetlm.tune.trainer", "LoopParams": "fleetlm.tune.trainer",
                "SFTConfig": "fleetlm.tune.sft", "DistillConfig": "fleetlm.tune.distill",
                "EvalConfig": "fleetlm.tune.evaluate"}


def _dataclass(name: str):
    return getattr(importlib.import_module(_DATACLASSES[name]), name)


class _DefaultsHelp(argparse.HelpFormatter):
    """Appends `(default X)`, read from the dataclass field behind a flag (`_field`), to its help."""

    def _get_help_string(self, action):
        source = getattr(action, "dataclass_field", None)
        if source is None:
            return action.help
        return f"{action.help} " + default_of(_dataclass(source[0]), source[1]).replace("%", "%%")


def _field(p: argparse.ArgumentParser, flag: str, source: str, help: str, **kw) -> None:
    """A flag that fills dataclass field `source` ("Class.field"): it defaults to None, so the
    dataclass's default applies (`given`), and its help shows that default."""
    p.add_argument(flag, help=help, **kw).dataclass_field = tuple(source.split("."))


def _model_args(p: argparse.ArgumentParser) -> None:
    # SFTConfig and DistillConfig require `base`: this default is the CLI's own
    p.add_argument("--base", default="gemma-3-270m",
                   help="embedded model id or a local HF folder (default %(default)s)")
    p.add_argument("--out", required=True, help="adapter folder to write (e.g. adapters/NAME)")
    _field(p, "--rank", "LoraParams.rank", "LoRA rank, 1..64", type=int)
    _field(p, "--alpha", "LoraParams.alpha", "LoRA alpha (scale = alpha / rank)", type=float)
    _field(p, "--dropout", "LoraParams.dropout", "LoRA dropout", type=float)
    _field(p, "--target-modules", "LoraParams.target_modules",
           "comma-separated projections (all: q,k,v,o,gate,up,down_proj)")
    _field(p, "--lr", "LoopParams.lr", "peak learning rate", type=float)
    _field(p, "--epochs", "LoopParams.epochs", "passes over the training data (may be fractional)", type=float)
    _field(p, "--batch-size", "LoopParams.batch_size", "examples per step", type=int)
    _field(p, "--seed", "LoopParams.seed", "random seed", type=int)
    _field(p, "--dtype", "LoopParams.dtype", "matmul dtype (auto: bf16 on CUDA or a CPU with native bf16, else fp32)",
           choices=["auto", "bf16", "fp32"])
    _field(p, "--checkpoint-every", "LoopParams.checkpoint_every",
           "steps between checkpoints (<out>.ckpt/; 0: at the end only)", type=int)
    p.add_argument("--max-steps", type=int, default=None, help="stop at this step (resume later)")
    _field(p, "--eval-every", "LoopParams.eval_every",
           "steps between held-out evaluations (0: before and after training only)", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in <out>.ckpt/")
    p.add_argument("--cache-dir", default=None)


def add_tune_parser(subparsers) -> argparse.ArgumentParser:
    t = subparsers.add_parser("tune", help="make expert adapters: LoRA SFT, prompt distillation")
    sub = t.add_subparsers(dest="tune_command", required=True)

    s = sub.add_parser("sft", help="LoRA fine-tuning on OpenAI chat JSONL (loss on assistant tokens)",
                       formatter_class=_DefaultsHelp)
    _model_args(s)
    s.add_argument("--data", required=True, help="chat JSONL ({'messages': [...], 'tools': [...]?} per line)")
    s.add_argument("--eval-data", default=None, help="held-out chat JSONL (default: --eval-fraction of --data)")
    _field(s, "--eval-fraction", "SFTConfig.eval_fraction", "held-out share of --data", type=float)
    _field(s, "--max-len", "SFTConfig.max_len", "tokens per example (longer ones are truncated)", type=int)
    s.add_argument("--init-adapter", default=None,
                   help="adapter folder to start from (a second stage; same rank, alpha, target modules)")
    s.set_defaults(func=cmd_sft)

    d = sub.add_parser("distill", help="distill a long system prompt into an adapter (KL to the prompted teacher)",
                       formatter_class=_DefaultsHelp)
    _model_args(d)
    d.add_argument("--system-prompt", required=True, help="text file with the system prompt")
    d.add_argument("--queries", required=True, help='JSONL of {"query": ...}')
    d.add_argument("--eval-queries", default=None, help="held-out queries (default: --eval-fraction of --queries)")
    _field(d, "--eval-fraction", "DistillConfig.eval_fraction", "held-out share of --queries", type=float)
    _field(d, "--max-new-tokens", "DistillConfig.max_new_tokens", "teacher answer length cap, tokens", type=int)
    _field(d, "--format", "DistillConfig.format",
           "chat: prompt as system message; text: prompt + blank line + query, for base models",
           choices=["chat", "text"])
    d.add_argument("--stop", action="append", help="stop string for answers (repeatable)")
    _field(d, "--top-k", "DistillConfig.top_k", "teacher log-probs kept per token", type=int)
    _field(d, "--latency-queries", "DistillConfig.latency_queries",
           "held-out queries timed one at a time on the engine", type=int)
    _field(d, "--engine-dtype", "DistillConfig.engine_dtype", "the engine's dtype (teacher answers, latency)")
    d.set_defaults(func=cmd_distill)

    e = sub.add_parser("eval", help="held-out score of an adapter vs the base model with a few-shot prompt",
                       formatter_class=_DefaultsHelp)
    e.add_argument("--task", required=True, choices=["extract", "arith"])
    _field(e, "--base", "EvalConfig.base", "embedded model id or a local HF folder")
    e.add_argument("--test", required=True, help="held-out JSONL written by `fleet tune datagen`")
    e.add_argument("--adapter", default=None, help="adapter folder (omit: base only)")
    e.add_argument("--shots-from", default=None, help="chat JSONL to draw the base model's few-shot examples from")
    _field(e, "--shots", "EvalConfig.shots", "few-shot examples in the base model's prompt", type=int)
    e.add_argument("--limit", type=int, default=None, help="first N test examples (default: all)")
    _field(e, "--max-tokens", "EvalConfig.max_tokens", "answer length cap, tokens", type=int)
    _field(e, "--engine-dtype", "EvalConfig.engine_dtype", "the engine's dtype")
    e.set_defaults(func=cmd_eval)

    g = sub.add_parser("datagen", help="generate an expert's training and held-out data (templates + random values)")
    g.add_argument("task", choices=["extract", "arith", "persona"])
    g.add_argument("--out", required=True, help="folder for the data files")
    g.add_argument("--train", type=int, default=None, help="training examples (task default if omitted)")
    g.add_argument("--test", type=int, default=None, help="held-out examples (task default if omitted)")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_datagen)
    return t


def _lora_loop(args):
    from fleetlm.tune.trainer import LoopParams, LoraParams

    modules = None if args.target_modules is None else [m.strip() for m in args.target_modules.split(",") if m.strip()]
    lora = given(LoraParams, rank=args.rank, alpha=args.alpha, dropout=args.dropout, target_modules=modules)
    loop = given(LoopParams, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                 dtype=args.dtype, checkpoint_every=args.checkpoint_every, max_steps=args.max_steps,
                 eval_every=args.eval_every)
    if (args.dtype or LoopParams.dtype) == "auto":  # LoopParams resolved it; say what this machine got
        print(f"fleetlm: training matmuls in {loop.dtype} (--dtype auto)", file=sys.stderr)
    return lora, loop


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def cmd_sft(args) -> int:
    from fleetlm.tune.data import DataError
    from fleetlm.tune.sft import SFTConfig, run_sft

    try:
        lora, loop = _lora_loop(args)
        res = run_sft(given(SFTConfig, base=args.base, data=args.data, out=args.out, eval_data=args.eval_data,
                            eval_fraction=args.eval_fraction, max_len=args.max_len, resume=args.resume,
                            cache_dir=args.cache_dir, init_adapter=args.init_adapter, lora=lora, loop=loop))
    except (DataError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    m = res.card["metrics"]
    if res.out is None:
        print(f"stopped at step {m['steps']}; continue with --resume")
        return 0
    print(f"adapter: {res.out}\nheld-out loss {m['eval_loss_before']:.4f} -> {m['eval_loss_after']:.4f} "
          f"({m['steps']} steps, {m['train_seconds']:.0f} s)")
    return 0


def cmd_distill(args) -> int:
    from fleetlm.tune.data import DataError
    from fleetlm.tune.distill import DistillConfig, run_distill

    try:
        lora, loop = _lora_loop(args)
        stop = None if args.stop is None else [x.encode().decode("unicode_escape") for x in args.stop]
        config = given(DistillConfig, base=args.base, system_prompt=args.system_prompt, queries=args.queries,
                       out=args.out, eval_queries=args.eval_queries, eval_fraction=args.eval_fraction,
                       max_new_tokens=args.max_new_tokens, format=args.format, stop=stop, top_k=args.top_k,
                       latency_queries=args.latency_queries, engine_dtype=args.engine_dtype, resume=args.resume,
                       cache_dir=args.cache_dir, lora=lora, loop=loop)
        card = run_distill(config)
    except (DataError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    m = card["metrics"]
    if "greedy_exact_match" in m:
        print(f"adapter: {args.out}\nheld-out top-{config.top_k} KL {m['held_out_topk_kl_before']:.4f} -> "
              f"{m['held_out_topk_kl_after']:.4f}; agreement {m['greedy_exact_match']:.1%}; "
              f"TTFT cut {m['ttft_speedup_cold']:.2f}x (cold) / {m['ttft_speedup_warm']:.2f}x (warm)")
    return 0


def cmd_eval(args) -> int:
    from fleetlm.tune.data import DataError
    from fleetlm.tune.evaluate import EvalConfig, run_eval

    try:
        res = run_eval(given(EvalConfig, task=args.task, base=args.base, test=args.test, adapter=args.adapter,
                             shots_from=args.shots_from, shots=args.shots, limit=args.limit,
                             max_tokens=args.max_tokens, engine_dtype=args.engine_dtype))
    except (DataError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print(json.dumps(res, indent=2))
    return 0


def cmd_datagen(args) -> int:
    from fleetlm.tune.datagen import GENERATORS

    files = GENERATORS[args.task](args.out, n_train=args.train, n_test=args.test, seed=args.seed)
    for f in files:
        print(f)
    return 0
