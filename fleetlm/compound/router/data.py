"""Per-query outcome data for training and evaluating routers, and its loaders.

A :class:`RoutingExample` is one prompt with, for every candidate model, the quality of that
model's answer (``scores``, 1.0 = correct) and what the answer cost in USD (``costs``).
Every loader returns ``list[RoutingExample]``; :func:`to_arrays` turns a list into the
``(n, M)`` matrices that policies and metrics take.

Sources (see ``../shared/data/SOURCES.md``; read in place, never copied into the repo):

* ``routerbench_zs`` — RouterBench zero-shot outcomes (RouterDC's split) for 11 models on
  ARC-Challenge, MBPP and Winogrande: ``{task}_{split}.csv``, one column per model with the
  0/1 score, one ``{model}|total_cost`` column with the real USD cost and one
  ``{model}|model_response`` with the answer (kept in ``responses``). The model list is
  read from the header (every ``|total_cost`` column). Prompts are stored as a Python list
  literal of turns; the turns are joined with a blank line. An empty score cell (no
  outcome recorded: 92 cells in 20 train rows, 62 in 8 test rows, all ARC) counts as 0.0:
  that reading reproduces the published GPT-4 test accuracy (87.4%); skipping the cells
  would give 88.0%.
* ``llmrouter`` — LLMRouter's ``dcrouter_preprocessed/{train,test}.json`` (5,608 / 500
  queries, 9 models, 14 tasks; its own split, used as is — 119 test questions also occur in
  train, as in the source). It has no costs, so they are derived from the model card
  (``example_data/llm_candidates/default_llm.json``, $/M input and output tokens):
  ``cost = (input_tokens × input_price + output_tokens × output_price) / 1e6`` with
  ``input_tokens = ceil(len(prompt) / 4)`` (the usual ~4 characters per English token) and
  a fixed ``output_tokens`` (default 128) since the data has no response lengths. Cost
  *ratios* between models — what routing decides on — equal their price ratios either way.
* our JSONL format (:func:`load_jsonl`), one JSON object per line::

      {"prompt": "...", "scores": {"model-a": 1.0, "model-b": 0.0},
       "costs": {"model-a": 0.0031, "model-b": 0.0002}}

  ``costs`` are USD for that query. Instead of ``costs`` a line may give token counts,
  ``"tokens": {"model-a": {"input": 812, "output": 95}, ...}``, priced with the ``prices``
  argument (``{model: {"input": usd_per_million, "output": usd_per_million}}``). An optional
  ``"task"`` string is kept for per-task reports. Every line must score and cost the same
  set of models. Blank lines are skipped. A malformed line raises ``ValueError`` naming the
  file and line number. A JSONL file is one split: train on one file, evaluate on another.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetlm.config import shared_data

SPLITS = ("train", "test")
ROUTERBENCH_TASKS = ("arc_challenge", "mbpp", "winograde")  # file stems as in the source
LLMROUTER_OUTPUT_TOKENS = 128  # assumed response length for llmrouter costs (see above)


def default_data_root() -> Path:
    """``shared_data("routing")``: where the project keeps public routing data."""
    return shared_data("routing")


@dataclass(frozen=True)
class RoutingExample:
    prompt: str
    scores: dict[str, float]  # model -> answer quality in [0, 1] (0/1 for exact-match tasks)
    costs: dict[str, float]  # model -> USD this query cost on that model (input + output)
    task: str | None = None  # source task when the data names one (reports only)
    # model -> the answer it gave, where the data records it (routerbench_zs): lets analyses
    # such as benchmarks/router_bounds.py compare answers across models. Not used to route.
    responses: dict[str, str] | None = None


@dataclass
class RoutingArrays:
    """Examples as matrices, columns in ``models`` order."""

    models: list[str]
    prompts: list[str]
    scores: np.ndarray  # (n, M) float64, quality
    costs: np.ndarray  # (n, M) float64, USD
    tasks: list[str | None]


def to_arrays(examples: list[RoutingExample], models: list[str] | None = None) -> RoutingArrays:
    """Stack examples into ``(n, M)`` matrices; ``models`` defaults to the first example's
    models, sorted. Raises ``ValueError`` if an example lacks one of them."""
    if not examples:
        raise ValueError("no routing examples")
    models = list(models) if models is not None else sorted(examples[0].scores)
    try:
        scores = np.array([[ex.scores[m] for m in models] for ex in examples], dtype=np.float64)
        costs = np.array([[ex.costs[m] for m in models] for ex in examples], dtype=np.float64)
    except KeyError as e:
        raise ValueError(f"an example has no score or cost for model {e.args[0]!r}") from None
    return RoutingArrays(models=models, prompts=[ex.prompt for ex in examples],
                         scores=scores, costs=costs, tasks=[ex.task for ex in examples])


def data_hash(examples: list[RoutingExample]) -> str:
    """sha256 of the examples' content (order-sensitive): names the training data in a card."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.prompt, ex.scores, ex.costs], sort_keys=True).encode())
    return h.hexdigest()


def load_dataset(spec: str, split: str = "train", *, root: Path | None = None,
                 prices: dict | None = None) -> list[RoutingExample]:
    """``spec`` is ``routerbench_zs``, ``llmrouter`` or a path to a ``.jsonl`` file (whose
    whole content is used; ``split`` does not apply to it)."""
    if spec == "routerbench_zs":
        return load_routerbench_zs(split, root=root)
    if spec == "llmrouter":
        return load_llmrouter(split, root=root)
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return load_jsonl(spec, prices=prices)
    raise ValueError(f"unknown routing data {spec!r}: use routerbench_zs, llmrouter or a .jsonl path")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _folder(root: Path | None, name: str) -> Path:
    folder = Path(root) if root is not None else default_data_root() / name
    if not folder.is_dir():
        raise FileNotFoundError(f"routing data folder {folder} is missing (see SOURCES.md)")
    return folder


def load_routerbench_zs(split: str, root: Path | None = None) -> list[RoutingExample]:
    """RouterBench zero-shot (3 task CSVs per split); ``root`` is the ``routerbench_zs`` folder."""
    _check_split(split)
    folder = _folder(root, "routerbench_zs")
    csv.field_size_limit(1 << 30)  # prompts with few-shot examples exceed the 128 KiB default
    out: list[RoutingExample] = []
    for task in ROUTERBENCH_TASKS:
        path = folder / f"{task}_{split}.csv"
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            models = [h.removesuffix("|total_cost") for h in header if h.endswith("|total_cost")]
            missing = [m for m in models if m not in header]
            if not models or missing:
                raise ValueError(f"{path}: no per-model score/cost columns for {missing or 'any model'}")
            for line, row in enumerate(reader, start=2):
                try:
                    costs = {m: float(row[f"{m}|total_cost"]) for m in models}
                except ValueError:
                    raise ValueError(f"{path}: row {line}: a model's total_cost is not a number") from None
                scores = {m: float(row[m]) if row[m].strip() else 0.0 for m in models}
                responses = {m: _routerbench_prompt(row[f"{m}|model_response"]) for m in models
                             if f"{m}|model_response" in row}
                out.append(RoutingExample(prompt=_routerbench_prompt(row["prompt"]), scores=scores,
                                          costs=costs, task=row.get("eval_name") or task,
                                          responses=responses or None))
    return out


def _routerbench_prompt(cell: str) -> str:
    """The CSV stores ``str(list_of_turns)`` (prompts and responses alike); join the turns (or
    keep the cell if it is not one)."""
    try:
        turns = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        return cell
    if isinstance(turns, list) and all(isinstance(t, str) for t in turns):
        return "\n\n".join(turns)
    return cell


def load_llmrouter(split: str, root: Path | None = None, *,
                   output_tokens: int = LLMROUTER_OUTPUT_TOKENS) -> list[RoutingExample]:
    """LLMRouter's ``dcrouter_preprocessed`` split; costs from the model card (module docstring).
    ``root`` is the ``llmrouter`` folder."""
    _check_split(split)
    folder = _folder(root, "llmrouter")
    card = json.loads((folder / "example_data" / "llm_candidates" / "default_llm.json").read_text())
    rows = json.loads((folder / "dcrouter_preprocessed" / f"{split}.json").read_text())
    out = []
    for i, row in enumerate(rows):
        prompt, scores = row["question"], {m: float(s) for m, s in row["scores"].items()}
        unpriced = [m for m in scores if m not in card]
        if unpriced:
            raise ValueError(f"llmrouter {split}[{i}]: no price for {unpriced}")
        tokens_in = math.ceil(len(prompt) / 4)
        costs = {m: (tokens_in * card[m]["input_price"] + output_tokens * card[m]["output_price"]) / 1e6
                 for m in scores}
        task = f"cluster{row['cluster_id']}" if "cluster_id" in row else None
        out.append(RoutingExample(prompt=prompt, scores=scores, costs=costs, task=task))
    return out


def load_jsonl(path: str | Path, *, prices: dict | None = None) -> list[RoutingExample]:
    """Our JSONL format (module docstring). Raises ``ValueError("FILE:LINE: why")``."""
    path = Path(path)
    out: list[RoutingExample] = []
    models: set[str] | None = None
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                ex = _parse_line(line, prices)
                if models is None:
                    models = set(ex.scores)
                elif set(ex.scores) != models:
                    raise ValueError(f"models {sorted(ex.scores)} differ from the first line's {sorted(models)}")
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
            out.append(ex)
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


def _parse_line(line: str, prices: dict | None) -> RoutingExample:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("a line must be a JSON object")
    prompt, scores = obj.get("prompt"), obj.get("scores")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError('"prompt" must be a non-empty string')
    scores = _number_map(scores, "scores")
    if not scores:
        raise ValueError('"scores" must name at least one model')
    if "costs" in obj:
        costs = _number_map(obj["costs"], "costs")
    elif "tokens" in obj:
        costs = _priced(obj["tokens"], prices)
    else:
        raise ValueError('a line needs "costs" (USD per model) or "tokens" (with prices)')
    if set(costs) != set(scores):
        raise ValueError(f'"scores" and "costs" name different models: {sorted(scores)} vs {sorted(costs)}')
    task = obj.get("task")
    if task is not None and not isinstance(task, str):
        raise ValueError('"task" must be a string')
    return RoutingExample(prompt=prompt, scores=scores, costs=costs, task=task)


def _number_map(value, field: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f'"{field}" must be an object {{model: number}}')
    out = {}
    for model, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f'"{field}"[{model!r}] must be a finite number, got {v!r}')
        if v < 0:
            raise ValueError(f'"{field}"[{model!r}] must be >= 0, got {v!r}')
        out[model] = float(v)
    return out


def _priced(tokens, prices: dict | None) -> dict[str, float]:
    if prices is None:
        raise ValueError('"tokens" needs prices ({model: {"input": $/M, "output": $/M}})')
    if not isinstance(tokens, dict):
        raise ValueError('"tokens" must be an object {model: {"input": n, "output": m}}')
    costs = {}
    for model, t in tokens.items():
        if model not in prices:
            raise ValueError(f"no price for model {model!r}")
        if not isinstance(t, dict):
            raise ValueError(f'"tokens"[{model!r}] must be {{"input": n, "output": m}}')
        counts = _number_map({k: t.get(k) for k in ("input", "output")}, f"tokens[{model!r}]")
        costs[model] = (counts["input"] * prices[model]["input"]
                        + counts["output"] * prices[model]["output"]) / 1e6
    return costs
