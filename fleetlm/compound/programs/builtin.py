"""Built-in programs, each a small function on the same `Ctx` API a developer uses.

- `sc` (self-consistency): n samples of one answer, the majority after normalising.
- `pot` (program of thought): the model writes an arithmetic expression, or steps, and a
  safe evaluator (`arith.evaluate`, no `eval`) computes them.
- `cascade`: a cheap model answers; if its answer fails a check, a stronger one does.
- `bon` (best of n): n samples, the one a verifier scores best (log-probability, a judge
  model, a check, or your own Python function).
- `moa` (mixture of agents): proposers answer at once, an aggregator writes the final
  answer from theirs, streamed.

`model=None` means the server's local base model (`ctx.default_model`).
"""

from __future__ import annotations

import json
import re

from fleetlm.compound.programs.arith import ExpressionError, evaluate, format_number
from fleetlm.compound.programs.ctx import Ctx, majority, program
from fleetlm.openai.chunks import ChatMessage
from fleetlm.openai.errors import UnsupportedError


def last_user_text(messages: list[dict]) -> str:
    text = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    return text if isinstance(text, str) else "".join(p.get("text", "") for p in text or [])


def normalise(answer: str) -> str:
    """Case, spacing and trailing punctuation do not split votes."""
    return re.sub(r"\s+", " ", answer).strip().strip(".!").lower()


@program("sc", tools=True)
async def sc(ctx: Ctx, messages, *, model: str | None = None, n: int = 5, temperature: float = 0.7,
             max_tokens: int = 256) -> str | ChatMessage:
    """With `tools` in the request, the votes are over normalised tool calls (name and
    arguments, in any order) and the answer is the winning sample's message."""
    model = model or ctx.default_model
    if ctx.tools is None:
        drafts = await ctx.fork(model, messages, n=n, temperature=temperature, max_tokens=max_tokens)
        answer, votes = majority(drafts, key=normalise)
        ctx.step("vote", votes=votes, n=len(drafts))
        return answer
    samples = await ctx.fork_choices(model, messages, n=n, temperature=temperature, max_tokens=max_tokens,
                                     **ctx.tools)
    keys = [choice_key(c.message) for c in samples]
    best, votes = majority(keys)
    ctx.step("vote", votes=votes, n=len(samples))
    return samples[keys.index(best)].message


def choice_key(message: ChatMessage) -> str:
    """What a vote counts: the tool calls (name, arguments as canonical JSON; order ignored),
    or the normalised text when there are none."""
    if not message.tool_calls:
        return normalise(message.content or "")
    return json.dumps(sorted([c.name, _canonical(c.arguments)] for c in message.tool_calls))


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except ValueError:
        return arguments


# Few-shot, one operation pattern per example: gemma-3-270m (a base model) copies the shape
# of the nearest example, so the examples cover *, -, /, + and one two-step case.
POT_PROMPT = """Question: A shop sells pens at 3 dollars each. How much do 7 pens cost?
Arithmetic: 7 * 3
Question: Tom had 20 apples and ate 6. How many apples are left?
Arithmetic: 20 - 6
Question: 48 cookies are shared equally by 6 children. How many cookies does each child get?
Arithmetic: 48 / 6
Question: A bus has 12 people and 9 more get on. How many people are on the bus?
Arithmetic: 12 + 9
Question: A box holds 16 crayons. How many crayons are in 4 boxes?
Arithmetic: 16 * 4
Question: Lea reads 30 pages a day for 5 days, then 12 more pages. How many pages did she read?
Arithmetic: 30 * 5 + 12
Question: {question}
Arithmetic:"""


STEPS_PROMPT = "Solve the problem step by step, then give the result as 'The answer is N.'\n\nProblem: {question}"
_STEP = re.compile(r"^(?P<lhs>[-+*/x×÷()\d\s.]+?)\s*=\s*(?P<claimed>-?\d+(?:\.\d+)?)$")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@program("pot")
async def pot(ctx: Ctx, messages, *, model: str | None = None, mode: str = "expression", max_tokens: int = 96) -> str:
    """mode "expression": the model writes one expression (few-shot, for a base model);
    mode "steps": the model writes steps "A op B = C." (as the arith-steps expert does) and
    each step is recomputed, later steps using the recomputed values, so a slip in the
    model's arithmetic does not reach the answer."""
    question, model = last_user_text(messages), model or ctx.default_model
    if mode == "expression":
        text = (await ctx.complete(model, POT_PROMPT.format(question=question), max_tokens=max_tokens,
                                   temperature=0, stop=["\n"])).text.strip()
        steps = [text]
    elif mode == "steps":
        text = (await ctx.chat(model, STEPS_PROMPT.format(question=question), max_tokens=max_tokens,
                               temperature=0)).text
        steps = step_expressions(text)
    else:
        raise ValueError(f"pot mode must be 'expression' or 'steps', got {mode!r}")
    try:
        value = recompute(steps)
    except ExpressionError as exc:
        ctx.step("evaluate", expression=text, error=str(exc))
        return f"I could not compute an answer (the expression {text!r}: {exc})."
    ctx.step("evaluate", expression=text, value=format_number(value))
    return format_number(value)


def step_expressions(text: str) -> list[str]:
    """"8 x 9 = 72. 72 - 2 = 70. The answer is 70." -> ["8 x 9 = 72", "72 - 2 = 70"]."""
    body = text.split("The answer is", 1)[0]
    return [s.strip() for s in re.split(r"(?<=\d)\.\s+|\n", body) if "=" in s]


def recompute(steps: list[str]) -> int | float:
    """The last value of a chain of steps: each "lhs = claimed" is evaluated with earlier
    claimed results replaced by their recomputed values; a bare expression is evaluated."""
    if not steps:
        raise ExpressionError("no arithmetic in the answer")
    fixed: dict[str, str] = {}  # a claimed result -> its recomputed value, as text
    value = None
    for step in steps:
        m = _STEP.match(step.rstrip("."))
        if m is None:  # a bare expression
            value = evaluate(step)
            continue
        # (a problem number equal to an earlier result is taken for that result: rare, and harmless when right)
        lhs = _NUMBER.sub(lambda n: fixed.get(n.group(0), n.group(0)), m.group("lhs"))
        value = evaluate(lhs.replace("x", "*"))
        fixed[m.group("claimed")] = format_number(value)
    return value


CHECKS = {
    "nonempty": lambda text: bool(text.strip()),
    "number": lambda text: re.fullmatch(r"\s*-?[\d,]*\.?\d+\s*", text) is not None,
    "json": lambda text: is_json(text),
}


def is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


@program("cascade")
async def cascade(ctx: Ctx, messages, *, models: list[str] | None = None, check: str = "nonempty",
                  max_tokens: int = 256) -> str:
    """Each model in turn (cheapest first) until an answer passes `check` (one of CHECKS);
    the last model's answer otherwise. `ctx.step("answer", ...)` records each try."""
    if check not in CHECKS:
        raise ValueError(f"cascade check must be one of {sorted(CHECKS)}, got {check!r}")
    models = models or [ctx.default_model]
    text = ""
    for i, model in enumerate(models):
        text = (await ctx.chat(model, messages, max_tokens=max_tokens, temperature=0)).text
        passed = CHECKS[check](text)
        ctx.step("answer", model=model, passed=passed, escalated=i > 0)
        if passed:
            break
    return text


JUDGE_PROMPT = """Which answer to the question below is best? Reply with its number only.

Question: {question}

{answers}"""


@program("bon", tools=True)
async def bon(ctx: Ctx, messages, *, model: str | None = None, n: int = 4, temperature: float = 0.8,
              max_tokens: int = 256, verifier: str = "logprob", judge: str | None = None) -> str | ChatMessage:
    """Best of n samples. `verifier`: "logprob" (the highest mean token log-probability, from
    the same request; with `tools` in the request too), "judge" (a judge model, default the
    same one, picks a number), one of CHECKS (the first sample that passes), or
    "module:function" (a Python check returning a bool or a score; the highest wins)."""
    model = model or ctx.default_model
    if verifier == "logprob":
        samples = await ctx.fork_choices(model, messages, n=n, temperature=temperature, max_tokens=max_tokens,
                                         logprobs=True, **(ctx.tools or {}))
        scores = [sum(e["logprob"] for e in c.logprobs or []) / max(1, len(c.logprobs or [])) for c in samples]
        best = max(range(len(samples)), key=lambda i: (scores[i], -i))
        ctx.step("verify", verifier=verifier, scores=[round(s, 4) for s in scores], chosen=best)
        return samples[best].message if ctx.tools else samples[best].message.content or ""
    if ctx.tools is not None:
        raise UnsupportedError(f"{ctx.program_id}: with tools, bon's verifier must be logprob", param="tools")
    texts = await ctx.fork(model, messages, n=n, temperature=temperature, max_tokens=max_tokens)
    if verifier == "judge":
        answers = "\n\n".join(f"Answer {i + 1}:\n{t}" for i, t in enumerate(texts))
        pick = await ctx.select(judge or model, JUDGE_PROMPT.format(question=last_user_text(messages), answers=answers),
                                [str(i + 1) for i in range(len(texts))])
        scores = [1.0 if str(i + 1) == pick else 0.0 for i in range(len(texts))]
    else:
        check = CHECKS.get(verifier) or _python_check(verifier)
        scores = [float(check(t)) for t in texts]
    best = max(range(len(texts)), key=lambda i: (scores[i], -i))
    ctx.step("verify", verifier=verifier, scores=[round(s, 4) for s in scores], chosen=best)
    return texts[best]


def _python_check(ref: str):
    """A `module:function` check; anything else is the caller's mistake."""
    import importlib

    module, sep, name = ref.partition(":")
    if not sep:
        raise ValueError(f"bon verifier must be logprob, judge, one of {sorted(CHECKS)} or module:function, "
                         f"got {ref!r}")
    return getattr(importlib.import_module(module), name)


MOA_PROMPT = """You have been given answers from several assistants to the user's question. Some may be
wrong. Write one answer that is better than each of them: correct, complete and concise.

{answers}"""


@program("moa")
async def moa(ctx: Ctx, messages, *, proposers: list[str] | None = None, k: int = 3,
              aggregator: str | None = None, temperature: float = 0.7, max_tokens: int = 256):
    """Mixture of agents: `proposers` (default: the local model k times, sampled) answer at
    once; the aggregator (default the local model) reads their answers and writes the
    final one, streamed to the client."""
    proposers = proposers or [ctx.default_model] * k
    drafts = await ctx.gather(*(ctx.chat(p, messages, temperature=temperature, max_tokens=max_tokens, rollout=i)
                                for i, p in enumerate(proposers)))
    ctx.step("propose", proposers=proposers, lengths=[len(d.text) for d in drafts])
    answers = "\n\n".join(f"Answer {i + 1}:\n{d.text}" for i, d in enumerate(drafts))
    system = MOA_PROMPT.format(answers=answers)
    if messages and messages[0].get("role") in ("system", "developer"):  # one system message: templates want that
        system, messages = f"{messages[0].get('content') or ''}\n\n{system}", messages[1:]
    return ctx.stream(aggregator or ctx.default_model, [{"role": "system", "content": system}, *messages],
                      max_tokens=max_tokens, temperature=0)
