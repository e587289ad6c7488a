"""Held-out score of an expert adapter against the base model with its best prompt:
``fleet tune eval``.

Everything is generated greedily by the fleetlm engine (the adapter through ``LoRARequest``).
The expert answers zero-shot in the chat format it was trained on. The base model is tried
three ways and its best score counts: zero-shot chat; k-shot chat (k solved training
examples as earlier turns); k-shot text completion (``<question>\\nAnswer: <answer>`` blocks,
the way a base model is usually prompted, stopping at the end of the line).

Scoring: ``extract``: the first JSON object in the answer equals the expected object
(all four fields); ``arith``: the number after "answer is" (else the last integer in the
answer) equals the expected result.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from fleetlm.tune.data import DataError, load_chat_jsonl


@dataclass(kw_only=True)
class EvalConfig:
    task: str  # "extract" | "arith"
    test: str  # JSONL rows {"messages": [user], "expected": ...}
    base: str = "gemma-3-270m"
    adapter: str | None = None
    shots_from: str | None = None  # chat JSONL (training data) for the base model's examples
    shots: int = 4
    limit: int | None = None
    max_tokens: int = 128
    engine_dtype: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.task not in SCORERS:
            raise ValueError(f"task must be one of {sorted(SCORERS)}, not {self.task!r}")


def score_extract(text: str, expected) -> bool:
    m = re.search(r"\{.*?\}", text, re.S)
    if not m:
        return False
    try:
        return json.loads(m.group(0)) == expected
    except json.JSONDecodeError:
        return False


def score_arith(text: str, expected) -> bool:
    m = re.search(r"answer is\s*(-?\d+)", text)
    nums = [m.group(1)] if m else re.findall(r"-?\d+", text)
    return bool(nums) and int(nums[-1]) == expected


SCORERS = {"extract": score_extract, "arith": score_arith}


def load_test(path: str | Path, limit: int | None) -> list[dict]:
    rows = []
    for n, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if raw.strip():
            obj = json.loads(raw)
            if not isinstance(obj, dict) or "messages" not in obj or "expected" not in obj:
                raise DataError(f"{path}:{n}: expected {{\"messages\": [...], \"expected\": ...}}")
            rows.append(obj)
    return rows[:limit] if limit else rows


def _chat_ids(tok, messages: list[dict]) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False).input_ids


def _prompts(tok, rows: list[dict], shots: list[dict]) -> dict[str, list[list[int]]]:
    """Token prompts per way of asking (see the module docstring)."""
    turns = [m for s in shots for m in s["messages"] if m["role"] in ("user", "assistant")]
    text_prefix = "".join(f"{s['messages'][-2]['content']}\nAnswer: {s['messages'][-1]['content']}\n\n" for s in shots)
    out = {"zero_shot_chat": [], "few_shot_chat": [], "few_shot_text": []}
    for r in rows:
        out["zero_shot_chat"].append(_chat_ids(tok, r["messages"]))
        out["few_shot_chat"].append(_chat_ids(tok, turns + r["messages"]))
        out["few_shot_text"].append(tok(text_prefix + r["messages"][-1]["content"] + "\nAnswer:").input_ids)
    return out


def run_eval(cfg: EvalConfig, *, log=print) -> dict:
    from fleetlm.engine.llm import LLM
    from fleetlm.engine.lora import LoRARequest
    from fleetlm.engine.sampling_params import SamplingParams

    rows = load_test(cfg.test, cfg.limit)
    shots = []
    if cfg.shots_from and cfg.shots:
        pool = load_chat_jsonl(cfg.shots_from)
        shots = [{"messages": e.messages} for e in random.Random(cfg.seed).sample(pool, min(cfg.shots, len(pool)))]
    llm = LLM(cfg.base, dtype=cfg.engine_dtype, enable_lora=cfg.adapter is not None, kv_cache_memory_gb=0.5)
    prompts = _prompts(llm.tokenizer, rows, shots)
    if not shots:
        prompts = {"zero_shot_chat": prompts["zero_shot_chat"]}
    score = SCORERS[cfg.task]
    ways = [(f"base_{k}", v, None) for k, v in prompts.items()]
    if cfg.adapter:
        ways.insert(0, ("adapter_zero_shot_chat", prompts["zero_shot_chat"],
                        LoRARequest(name=Path(cfg.adapter).name, path=str(cfg.adapter))))
    result: dict = {"task": cfg.task, "n": len(rows), "shots": len(shots), "adapter": cfg.adapter}
    for name, ids, lora in ways:
        stop = ["\n"] if name.endswith("_text") else []
        t0 = time.monotonic()
        params = SamplingParams(max_tokens=cfg.max_tokens, temperature=0.0, stop=stop)
        # the first prompt alone puts the shared few-shot prefix in the prefix cache for the rest
        outs = llm.generate(prompt_token_ids=ids[:1], lora_request=lora, sampling_params=params)
        if len(ids) > 1:
            outs += llm.generate(prompt_token_ids=ids[1:], lora_request=lora, sampling_params=params)
        texts = [o.outputs[0].text for o in outs]
        acc = sum(score(t, r["expected"]) for t, r in zip(texts, rows)) / len(rows)
        result[name] = round(acc, 4)
        result[f"{name}_example"] = texts[0][:200]
        log(f"{name}: {acc:.1%} ({time.monotonic() - t0:.0f} s)")
    base_scores = {k: v for k, v in result.items() if k.startswith("base_") and not k.endswith("_example")}
    best = max(base_scores, key=base_scores.get)
    result["base_best"], result["base_best_way"] = base_scores[best], best
    if cfg.adapter:
        result["margin_vs_best_base"] = round(result["adapter_zero_shot_chat"] - base_scores[best], 4)
    return result
