"""Prompt distillation: ``fleet tune distill``. A long system prompt becomes a LoRA adapter.

    fleet tune distill --base gemma-3-270m --system-prompt PROMPT.txt --queries Q.jsonl --out adapters/NAME

1. Teacher = the base model with the system prompt. Its greedy answers to every query are
   generated with the fleetlm engine (the shared system prompt is prefix-cached there).
2. Teacher distributions: one no-grad forward of the HF base over prompt + answer (the
   system prompt's KV computed once and reused), keeping the top ``top_k`` log-probs per
   answer token plus the remaining ("tail") mass.
3. Student = base + LoRA, *without* the prompt, trained on KL(teacher || student) over those
   answer tokens. With the top-k buckets plus one tail bucket this is the exact KL between
   the two distributions coarsened to k + 1 outcomes: a lower bound of the full KL, equal to
   it when the teacher's mass sits in its top k.
4. Report on held-out queries (:mod:`fleetlm.tune.distill_report`): prompt tokens removed,
   TTFT / latency with prompt vs distilled on the engine, greedy agreement, full-vocab KL.

Queries file: JSONL, one ``{"query": "..."}`` per line. Held out: ``--eval-queries`` or a
seeded ``--eval-fraction`` of the queries. ``--format chat`` (default) puts the prompt in a
system message and the query in a user message of the tokenizer's chat template;
``--format text`` is for base models that continue documents rather than follow chats: the
teacher sees ``<bos>`` + prompt + ``"\n\n"`` + query, the student ``<bos>`` + query (so a
query is written as e.g. ``"Customer: ...\nPip:"``, usually with ``--stop "\n"``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fleetlm.tune.base import autocast, load_base, logits_at, pad_batch
from fleetlm.tune.data import DataError, file_sha256
from fleetlm.tune.trainer import LoopParams, LoraParams, make_lora, params_dict, save_adapter_atomic, train_lora


@dataclass(kw_only=True)
class DistillConfig:
    base: str
    system_prompt: str  # path of a text file
    queries: str  # JSONL of {"query": ...}
    out: str
    eval_queries: str | None = None
    eval_fraction: float = 0.15
    max_new_tokens: int = 48  # teacher answer length cap (tokens)
    format: str = "chat"  # "chat" | "text" (see the module docstring)
    stop: list[str] = field(default_factory=list)  # stop strings for teacher and student answers
    top_k: int = 32  # teacher log-probs kept per answer token
    latency_queries: int = 16  # held-out queries timed one at a time on the engine
    engine_dtype: str = "auto"  # the fleetlm engine's dtype (teacher generation, report)
    resume: bool = False
    cache_dir: str | None = None
    lora: LoraParams = field(default_factory=LoraParams)
    loop: LoopParams = field(default_factory=LoopParams)

    def __post_init__(self):
        if self.format not in ("chat", "text"):
            raise ValueError(f"format must be 'chat' or 'text', not {self.format!r}")
        if self.top_k < 1 or self.max_new_tokens < 1:
            raise ValueError("top_k and max_new_tokens must be >= 1")


@dataclass
class DistillItem:
    """One query with its teacher answer and the teacher's distribution over each answer token."""

    query: str
    teacher_prompt: list[int]  # system prompt + query, chat-templated
    student_prompt: list[int]  # query only
    answer: list[int]  # the teacher's greedy answer (ends with EOS when it stopped)
    topk_ids: torch.Tensor | None = None  # (len(answer), k) long
    topk_logp: torch.Tensor | None = None  # (len(answer), k) float: teacher log-probs


def load_queries(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("query"), str) or not obj["query"].strip():
            raise DataError(f'{path}:{n}: expected {{"query": "<non-empty text>"}}')
        out.append(obj["query"])
    if not out:
        raise DataError(f"{path}: no queries")
    return out


def prompt_ids(tokenizer, system: str | None, query: str, fmt: str = "chat") -> list[int]:
    """Token ids of the teacher's (system given) or the student's (system None) prompt."""
    if fmt == "text":
        return tokenizer((system + "\n\n" if system else "") + query, add_special_tokens=True).input_ids
    return chat_ids(tokenizer, system, query)


def chat_ids(tokenizer, system: str | None, query: str) -> list[int]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": query}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def answer_params(max_new_tokens: int, stop: list[str]):
    from fleetlm.engine.sampling_params import SamplingParams

    return SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop=list(stop))


def teacher_answers(llm, items: list[DistillItem], params) -> None:
    """Fill ``answer`` with the teacher's greedy answers, generated by the fleetlm engine."""
    # The first prompt runs alone so that its system-prompt blocks are in the prefix cache
    # before the others are admitted (admitted together, each would compute them again).
    outs = llm.generate(prompt_token_ids=[items[0].teacher_prompt], sampling_params=params)
    outs += llm.generate(prompt_token_ids=[it.teacher_prompt for it in items[1:]], sampling_params=params) \
        if len(items) > 1 else []
    for it, o in zip(items, outs):
        it.answer = list(o.outputs[0].token_ids)


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def teacher_logprobs(model, items: list[DistillItem], dtype: str, ctx=contextlib.nullcontext):
    """Yield (item, (len(answer), vocab) fp32 log-probs of the teacher over the answer tokens),
    one item at a time. The prompt prefix shared by all items (the system prompt) is run
    once; its KV is copied for each item (HF caches are mutated by a forward). Each teacher
    forward runs inside ``ctx()`` (e.g. a PEFT model's ``disable_adapter``); the caller's code
    between items does not."""
    shared = max(0, min(_common_prefix([it.teacher_prompt for it in items]),
                        min(len(it.teacher_prompt) for it in items) - 1))
    prefix = None
    if shared:
        with torch.no_grad(), autocast(dtype), ctx():
            prefix = model(input_ids=torch.tensor([items[0].teacher_prompt[:shared]]), use_cache=True).past_key_values
    for it in items:
        rest = it.teacher_prompt[shared:] + it.answer[:-1]
        cache = copy.deepcopy(prefix) if prefix is not None else None
        with torch.no_grad(), autocast(dtype), ctx():
            logits = model(input_ids=torch.tensor([rest]), past_key_values=cache, use_cache=cache is not None).logits[0]
        start = len(it.teacher_prompt) - shared - 1  # logits here predict answer[0]
        yield it, torch.log_softmax(logits[start:start + len(it.answer)].float(), dim=-1)


def fill_topk(model, items: list[DistillItem], top_k: int, dtype: str) -> None:
    for it, logp in teacher_logprobs(model, items, dtype):
        it.topk_logp, it.topk_ids = logp.topk(top_k, dim=-1)


def kl_loss(model, batch: list[DistillItem], pad_id: int) -> tuple[torch.Tensor, int]:
    """Summed KL(teacher || student) over the answer tokens of a batch, on top-k + tail buckets."""
    seqs = [it.student_prompt + it.answer[:-1] for it in batch]
    ids, attn = pad_batch(seqs, pad_id)
    rows = torch.cat([torch.full((len(it.answer),), i) for i, it in enumerate(batch)])
    cols = torch.cat([torch.arange(len(it.answer)) + len(it.student_prompt) - 1 for it in batch])
    logp_s = torch.log_softmax(logits_at(model, ids, attn, rows, cols), dim=-1)  # (N, V)
    t_ids = torch.cat([it.topk_ids for it in batch])
    t_logp = torch.cat([it.topk_logp for it in batch])
    s_top = logp_s.gather(1, t_ids)  # (N, k)
    p_t = t_logp.exp()
    t_tail = (1 - p_t.sum(-1)).clamp_min(1e-8)
    s_tail = (1 - s_top.exp().sum(-1)).clamp_min(1e-8)
    kl = (p_t * (t_logp - s_top)).sum(-1) + t_tail * (t_tail.log() - s_tail.log())
    return kl.sum(), len(rows)


def mean_kl(model, items: list[DistillItem], pad_id: int, batch_size: int) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            s, k = kl_loss(model, items[i:i + batch_size], pad_id)
            total, n = total + s.item(), n + k
    return total / max(1, n)


def _split(queries: list[str], cfg: DistillConfig) -> tuple[list[str], list[str]]:
    if cfg.eval_queries:
        return queries, load_queries(cfg.eval_queries)
    order = torch.randperm(len(queries), generator=torch.Generator().manual_seed(cfg.loop.seed)).tolist()
    n_eval = max(1, round(len(queries) * cfg.eval_fraction))
    if n_eval >= len(queries):
        raise DataError(f"only {len(queries)} queries: too few to hold some out")
    return [queries[i] for i in order[n_eval:]], [queries[i] for i in order[:n_eval]]


def run_distill(cfg: DistillConfig, *, log=print) -> dict:
    """Build the adapter at ``cfg.out`` and return its card (with the held-out report)."""
    from fleetlm.engine.llm import LLM
    from fleetlm.tune.distill_report import held_out_report

    system = Path(cfg.system_prompt).read_text(encoding="utf-8").strip()
    if not system:
        raise DataError(f"{cfg.system_prompt}: empty system prompt")
    train_q, held_q = _split(load_queries(cfg.queries), cfg)
    torch.manual_seed(cfg.loop.seed)
    base = load_base(cfg.base, cache_dir=cfg.cache_dir)
    tok = base.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    def item(q):
        return DistillItem(query=q, teacher_prompt=prompt_ids(tok, system, q, cfg.format),
                           student_prompt=prompt_ids(tok, None, q, cfg.format), answer=[])
    train, held = [item(q) for q in train_q], [item(q) for q in held_q]
    llm = LLM(str(base.path), dtype=cfg.engine_dtype, enable_lora=True, max_loras=2,
              max_lora_rank=max(64, cfg.lora.rank), kv_cache_memory_gb=0.5)
    log(f"distill: system prompt {len(train[0].teacher_prompt) - len(train[0].student_prompt)} tokens; "
        f"teacher answers for {len(train)} train + {len(held)} held-out queries (fleetlm engine)")
    params = answer_params(cfg.max_new_tokens, cfg.stop)
    teacher_answers(llm, train + held, params)
    train = [it for it in train if it.answer]
    log(f"distill: teacher distributions (top {cfg.top_k}) over {sum(len(i.answer) for i in train + held)} tokens")
    fill_topk(base.model, train + held, cfg.top_k, cfg.loop.dtype)
    hyper = {**params_dict(cfg.lora, cfg.loop), "max_new_tokens": cfg.max_new_tokens, "top_k": cfg.top_k,
             "format": cfg.format, "stop": cfg.stop}
    hyper.pop("max_steps")
    hashes = {"system_prompt_sha256": file_sha256(cfg.system_prompt), "queries_sha256": file_sha256(cfg.queries)}
    fingerprint = hashlib.sha256(json.dumps([hashes, hyper, str(base.path)], sort_keys=True).encode()).hexdigest()
    model = make_lora(base.model, cfg.lora)
    out = Path(cfg.out)
    result = train_lora(model, train, loss_fn=lambda m, b: kl_loss(m, b, pad_id),
                        eval_fn=lambda: mean_kl(model, held, pad_id, cfg.loop.batch_size), loop=cfg.loop,
                        ckpt_dir=out.with_name(out.name + ".ckpt"), fingerprint=fingerprint,
                        resume=cfg.resume, desc=f"distill {out.name}")
    card = {"name": out.name, "kind": "distill", "base": cfg.base, "base_path": str(base.path),
            "command": "fleet tune distill",
            "data": {"system_prompt": cfg.system_prompt, "queries": cfg.queries, **hashes,
                     "train_queries": len(train), "held_out_queries": len(held)},
            "hyperparameters": hyper,
            "metrics": {"held_out_topk_kl_before": round(result.eval_loss_before, 4),
                        "held_out_topk_kl_after": round(result.eval_loss_after, 4), "steps": result.steps,
                        "train_seconds": round(result.seconds, 1)}}
    if result.steps < result.total_steps:
        log(f"distill: stopped at step {result.steps} of {result.total_steps}; rerun with --resume to finish")
        return card
    save_adapter_atomic(model, out, card)
    report = held_out_report(llm, model, held, adapter=out, dtype=cfg.loop.dtype,
                             latency_queries=cfg.latency_queries, params=params,
                             base_path=base.path, engine_dtype=cfg.engine_dtype, log=log)
    card["metrics"].update(report)
    save_adapter_atomic(model, out, card)  # again, now with the report in the card
    return card
