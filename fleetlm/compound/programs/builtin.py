"""Built-in programs, each a small function on the same `Ctx` API a developer uses.

- `sc` (self-consistency): n samples of one answer, the majority after normalising.
- `pot` (program of thought): the model writes an arithmetic expression, a safe evaluator
  (`arith.evaluate`, no `eval`) computes it.
- `cascade`: a cheap model answers; if its answer fails a check, a stronger one does.

`model=None` means the server's local base model (`ctx.default_model`).
"""

from __future__ import annotations

import json
import re

from fleetlm.compound.programs.arith import ExpressionError, evaluate, format_number
from fleetlm.compound.programs.ctx import Ctx, majority, program


def last_user_text(messages: list[dict]) -> str:
    text = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    return text if isinstance(text, str) else "".join(p.get("text", "") for p in text or [])


def normalise(answer: str) -> str:
    """Case, spacing and trailing punctuation do not split votes."""
    return re.sub(r"\s+", " ", answer).strip().strip(".!").lower()


@program("sc")
async def sc(ctx: Ctx, messages, *, model: str | None = None, n: int = 5, temperature: float = 0.7,
             max_tokens: int = 256) -> str:
    drafts = await ctx.fork(model or ctx.default_model, messages, n=n, temperature=temperature, max_tokens=max_tokens)
    answer, votes = majority(drafts, key=normalise)
    ctx.step("vote", votes=votes, n=len(drafts))
    return answer


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


@program("pot")
async def pot(ctx: Ctx, messages, *, model: str | None = None, max_tokens: int = 48) -> str:
    question = last_user_text(messages)
    result = await ctx.complete(model or ctx.default_model, POT_PROMPT.format(question=question),
                                max_tokens=max_tokens, temperature=0, stop=["\n"])
    expression = result.text.strip()
    try:
        value = format_number(evaluate(expression))
    except ExpressionError as exc:
        ctx.step("evaluate", expression=expression, error=str(exc))
        return f"I could not compute an answer (the expression {expression!r}: {exc})."
    ctx.step("evaluate", expression=expression, value=value)
    return value


CHECKS = {
    "nonempty": lambda text: bool(text.strip()),
    "number": lambda text: re.fullmatch(r"\s*-?[\d,]*\.?\d+\s*", text) is not None,
    "json": lambda text: _is_json(text),
}


def _is_json(text: str) -> bool:
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
