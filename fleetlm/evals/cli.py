"""``fleet eval bfcl``: BFCL questions through a running server's chat API, scored by our checker.

    fleet eval bfcl --model gemma-3-270m --base-url http://127.0.0.1:8000/v1 \\
        --categories simple_python,multiple,parallel,parallel_multiple,irrelevance --limit 50

Each question becomes one ``/chat/completions`` request (its messages, its functions as
OpenAI tools, ``temperature`` 0), sent ``--concurrency`` at a time; the response's
``tool_calls`` are mapped back to BFCL names and scored with
:mod:`fleetlm.evals.bfcl_checker`. A failed request (HTTP error, timeout) counts as a wrong
answer and is counted separately in the table. ``--out`` writes one JSON line per question
(calls, verdict, error, latency). The last line printed is ``overall accuracy: 0.xxx`` (the
mean over the categories run). ``multi_turn_*`` categories are refused: scoring them needs
BFCL's simulated APIs.

``add_eval_parser(subparsers)`` adds the ``eval`` command to the ``fleet`` parser.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fleetlm.config import default_of, given
from fleetlm.evals.bfcl import (
    Question,
    build_request,
    load_category,
    parse_response,
    to_openai_tools,
)
from fleetlm.evals.bfcl_checker import check, rule_for

DEFAULT_CATEGORIES = "simple_python,multiple,parallel,parallel_multiple,irrelevance"


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    e = subparsers.add_parser("eval", help="evaluate a served model on public benchmarks")
    sub = e.add_subparsers(dest="eval_command", required=True)
    b = sub.add_parser("bfcl", help="Berkeley Function Calling Leaderboard (AST categories)")
    b.add_argument("--model", required=True, help="model id as the server knows it")
    b.add_argument("--base-url", default="http://127.0.0.1:8000/v1",
                   help="the server's OpenAI base URL (/v1 is added if missing)")
    b.add_argument("--api-key", default=None)
    b.add_argument("--categories", default=DEFAULT_CATEGORIES, help="comma-separated BFCL categories")
    b.add_argument("--limit", type=int, default=None, help="first N questions of each category")
    b.add_argument("--tool-choice", choices=["auto", "required"],
                   help=f"tool_choice of every request {default_of(RunConfig, 'tool_choice')}")
    b.add_argument("--concurrency", type=int, help=f"requests in flight {default_of(RunConfig, 'concurrency')}")
    b.add_argument("--max-tokens", type=int,
                   help=f"max_tokens of every request {default_of(RunConfig, 'max_tokens')}")
    b.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    b.add_argument("--data-root", default=None, help="BFCL data folder (default ../shared/data/...)")
    b.add_argument("--out", default=None, help="write per-question results here (JSON lines)")
    b.set_defaults(func=cmd_bfcl)
    return e


@dataclass
class QuestionResult:
    id: str
    category: str
    valid: bool
    error: str  # why it was scored wrong ("" when right)
    error_type: str  # checker tag, or "request" when no response came back
    calls: list  # the model's calls as [{bfcl_name: args}]
    latency_s: float


@dataclass
class RunConfig:
    model: str
    tool_choice: str = "auto"
    max_tokens: int = 512
    concurrency: int = 8

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


def api_base(url: str) -> str:
    """``http://host:port`` or ``…/v1`` → ``…/v1`` (no trailing slash)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


async def ask(client, question: Question, config: RunConfig) -> QuestionResult:
    """One question: request, parse, score. ``client`` is an ``httpx.AsyncClient`` at /v1."""
    import httpx

    tools = to_openai_tools(question.functions)
    body = build_request(question, tools, model=config.model, tool_choice=config.tool_choice,
                         max_tokens=config.max_tokens)
    start = time.perf_counter()
    try:
        response = await client.post("/chat/completions", json=body)
        latency = time.perf_counter() - start
        if response.status_code != 200:
            return QuestionResult(question.id, question.category, False,
                                  f"HTTP {response.status_code}: {response.text[:300]}", "request", [], latency)
        calls = parse_response(response.json(), tools)
    except (httpx.HTTPError, ValueError) as e:
        return QuestionResult(question.id, question.category, False, f"{type(e).__name__}: {e}",
                              "request", [], time.perf_counter() - start)
    verdict = check(question.category, question.functions, calls, question.ground_truth or [])
    return QuestionResult(question.id, question.category, verdict.valid, verdict.error,
                          verdict.error_type, calls, latency)


async def run_questions(client, questions: list[Question], config: RunConfig,
                        progress=None) -> list[QuestionResult]:
    """All questions, at most ``config.concurrency`` in flight; results in question order."""
    gate = asyncio.Semaphore(config.concurrency)

    async def one(q: Question) -> QuestionResult:
        async with gate:
            result = await ask(client, q, config)
        if progress is not None:
            progress(result)
        return result

    return list(await asyncio.gather(*(one(q) for q in questions)))


@dataclass
class CategoryScore:
    category: str
    n: int
    correct: int
    request_errors: int  # no usable response (counted as wrong)
    mean_latency_s: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def summarise(results: list[QuestionResult]) -> list[CategoryScore]:
    """Per-category scores, in the order categories first appear."""
    by: dict[str, list[QuestionResult]] = {}
    for r in results:
        by.setdefault(r.category, []).append(r)
    return [CategoryScore(cat, len(rs), sum(r.valid for r in rs), sum(r.error_type == "request" for r in rs),
                          sum(r.latency_s for r in rs) / len(rs)) for cat, rs in by.items()]


def format_table(scores: list[CategoryScore], *, model: str, tool_choice: str) -> str:
    lines = [f"BFCL (AST) — model {model}, tool_choice={tool_choice}",
             f"{'category':<24}{'n':>6}{'correct':>9}{'accuracy':>10}{'req.err':>9}{'latency s':>11}"]
    for s in scores:
        lines.append(f"{s.category:<24}{s.n:>6}{s.correct:>9}{s.accuracy:>10.3f}"
                     f"{s.request_errors:>9}{s.mean_latency_s:>11.2f}")
    overall = sum(s.accuracy for s in scores) / len(scores) if scores else 0.0
    lines.append(f"overall accuracy: {overall:.3f}")
    return "\n".join(lines)


def _categories(text: str) -> list[str]:
    categories = [c.strip() for c in text.split(",") if c.strip()]
    if not categories:
        raise ValueError("--categories is empty")
    for c in categories:
        if c.startswith("multi_turn"):
            raise ValueError(f"{c}: multi-turn categories need BFCL's simulated APIs to score; "
                             "only single-turn (AST) categories are supported")
        rule_for(c)  # unknown names fail here, before any request
    return categories


def cmd_bfcl(args) -> int:
    import httpx

    try:
        categories = _categories(args.categories)
        root = Path(args.data_root) if args.data_root else None
        questions = [q for c in categories for q in load_category(c, root, limit=args.limit)]
        config = given(RunConfig, model=args.model, tool_choice=args.tool_choice, max_tokens=args.max_tokens,
                       concurrency=args.concurrency)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    done = [0]

    def progress(_):
        done[0] += 1
        if done[0] % 25 == 0 or done[0] == len(questions):
            print(f"  {done[0]}/{len(questions)} answered", file=sys.stderr, flush=True)

    async def main():
        limits = httpx.Limits(max_connections=config.concurrency)
        async with httpx.AsyncClient(base_url=api_base(args.base_url), headers=headers,
                                     timeout=args.timeout, limits=limits) as client:
            return await run_questions(client, questions, config, progress)

    results = asyncio.run(main())
    if args.out:
        Path(args.out).write_text("".join(json.dumps(asdict(r)) + "\n" for r in results))
    print(format_table(summarise(results), model=args.model, tool_choice=config.tool_choice))
    if results and all(r.error_type == "request" for r in results):
        print(f"error: no request succeeded (first: {results[0].error})", file=sys.stderr)
        return 1
    return 0
