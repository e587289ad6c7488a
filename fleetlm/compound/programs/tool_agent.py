"""`compound/<name>` (e.g. `compound/tool-agent`): an LLMCompiler-style agent over the
server's own tools, served as an ordinary chat model.

One request runs up to `max_rounds` rounds of: the planner model (any catalog Target) writes
a plan in `fleetlm.compound.tools.plan`'s format -> the DAG executor runs it (independent
calls concurrently) -> the joiner model (the same or another Target) reads the results and
answers (`Action: Finish(...)`) or asks for another round (`Action: Replan(...)`). A plan
that cannot be parsed is sent back to the planner with the error. The last round's joiner
must answer. It is a compound program on `Ctx` like any other (`ctx.chat` for the planner and
joiner, which may be any model id: a local model, an upstream server, a router; `ctx.plan`
for the tools), served by a `ProgramTarget` with the configured tools.

Contract: an OpenAI chat completion (streamed too, the plan runs as `fleetlm_step` events) with
usage summed over the planner and joiner calls, plus `fleetlm_trace`:
{"rounds": [{"round", "plan", "error", "planner_s", "joiner", "joiner_s"}], "calls": [each
call's id, round, tool, args, start_s/end_s (seconds since the request started), duration_s,
attempts, error, result], "wall_s"}. The client's `tools` are refused: the agent's tools are
configured on the server.
"""

from __future__ import annotations

import json
import re
import time

from fleetlm.compound.programs.ctx import Ctx
from fleetlm.compound.programs.target import ProgramTarget
from fleetlm.compound.tools.plan import PlanError, parse_plan
from fleetlm.compound.tools.registry import ToolRegistry, docs_tool, http_tool, python_tool, sql_tool
from fleetlm.config import Budget, ToolAgentConfig
from fleetlm.openai.chunks import ModelCard
from fleetlm.openai.errors import NotFoundError


def build_tools(cfg: ToolAgentConfig, *, embedder=None) -> ToolRegistry:
    """The configured tools; the docs tool embeds its folder now (MiniLM, loaded if not given)."""
    reg = ToolRegistry(python_tool(ref) for ref in cfg.tools)
    for h in cfg.http:
        reg.add(http_tool(h.name, h.url, description=h.description, parameters=h.parameters, method=h.method,
                          headers=h.headers, timeout_s=h.timeout_s if h.timeout_s is not None else cfg.call_timeout_s,
                          allow_private=h.allow_private))
    if cfg.sqlite:
        reg.add(sql_tool(cfg.sqlite))
    if cfg.docs:
        if embedder is None:
            from fleetlm.models.embeddings import Embedder

            embedder = Embedder()
        reg.add(docs_tool(cfg.docs, embedder))
    return reg


def build_tool_agent(cfg: ToolAgentConfig, by_id, *, embedder=None, tools: ToolRegistry | None = None):
    """The agent as a ProgramTarget over already-built Targets (`by_id`: model id -> Target,
    e.g. the Catalog), with `tools` (default: built from `cfg`)."""
    joiner = cfg.joiner or cfg.planner
    missing = sorted(m for m in {cfg.planner, joiner} if m not in by_id)
    if missing:
        raise ValueError(f"tool agent {cfg.name}: unknown model ids {missing}")
    tools = tools if tools is not None else build_tools(cfg, embedder=embedder)
    param_order = {t.name: list(t.parameters.get("properties", {})) for t in tools}
    first = next(iter(tools), None)
    example = f"{first.name}({next(iter(param_order[first.name]), 'arg')}" if first else "tool(arg"
    prompt = PLANNER_PROMPT.format(tools="\n".join(describe_tool(t) for t in tools), example=example)

    def resolve(model: str):
        try:
            return by_id[model]
        except KeyError:
            raise NotFoundError(f"The model {model!r} does not exist") from None

    return ProgramTarget(cfg.name, tool_agent, resolve=resolve, default_model=cfg.planner,
                         engines=by_id[cfg.planner].engines() | by_id[joiner].engines(),
                         params={"planner": cfg.planner, "joiner": joiner, "planner_prompt": prompt,
                                 "param_order": param_order, "max_rounds": cfg.max_rounds,
                                 "max_tokens": cfg.max_tokens},
                         budget=Budget(max_calls=2 * cfg.max_rounds + 1, max_seconds=None), registry=tools,
                         tool_timeout_s=cfg.call_timeout_s, tool_retries=cfg.retries,
                         card=ModelCard(f"compound/{cfg.name}", planner=cfg.planner, joiner=joiner,
                                        tools=[t.name for t in tools]))


PLANNER_PROMPT = """You answer the user's question by planning calls to these tools:
{tools}

Write the plan as numbered calls, one per line, and end with join(). Pass a call's result to a
later call with $N, or one of its fields with $N.field. Calls that do not use each other's
results run at the same time. Use only the tools above, with name=value arguments. Example:
1. {example}="...")
2. {example}=$1)
3. join()"""

JOINER_PROMPT = """You are given a question and the results of tool calls made to answer it.
Reply in exactly this form:
Thought: <what the results show>
Action: Finish(<the final answer for the user>)
{replan}"""

REPLAN = ("or, if the results are not enough and more tool calls would help:\n"
          "Thought: <what is missing>\nAction: Replan(<what to look up next>)")
_ACTION = re.compile(r"Action:\s*(Finish|Replan)\s*\((.*)", re.S)


def describe_tool(tool) -> str:
    """`- name(a: string, b?: array[number], c: "x"|"y"): description` (? marks optional)."""
    def kind(v: dict) -> str:
        if "enum" in v:
            return "|".join(json.dumps(e) for e in v["enum"])
        if v.get("type") == "array" and isinstance(v.get("items"), dict) and "type" in v["items"]:
            return f"array[{v['items']['type']}]"
        return str(v.get("type", "any"))

    props, required = tool.parameters.get("properties", {}), set(tool.parameters.get("required", []))
    params = ", ".join(f"{k}{'' if k in required else '?'}: {kind(v)}" for k, v in props.items())
    return f"- {tool.name}({params}): {tool.description}"


async def tool_agent(ctx: Ctx, messages: list[dict], *, planner: str, joiner: str, planner_prompt: str,
                     param_order: dict, max_rounds: int, max_tokens: int) -> str:
    """Plan -> execute -> join rounds (see the module docstring); the trace goes to ctx.trace."""
    system = [_text(m) for m in messages if m["role"] in ("system", "developer")]
    convo = [{"role": m["role"], "content": _text(m)} for m in messages if m["role"] in ("user", "assistant")]
    question = next((m["content"] for m in reversed(convo) if m["role"] == "user"), "")
    planner_msgs = [{"role": "system", "content": "\n\n".join([planner_prompt, *system])}, *convo]
    rounds, calls, observations, answer = [], [], [], None
    ctx.trace.update(rounds=rounds, calls=calls)  # filled as the rounds go
    ask = lambda model, msgs: ctx.chat(model, msgs, max_tokens=max_tokens, temperature=0)  # noqa: E731
    for r in range(max_rounds):
        last = r == max_rounds - 1
        s = time.monotonic()
        plan_text = (await ask(planner, planner_msgs)).text
        info = {"round": r, "plan": plan_text, "error": None, "planner_s": round(time.monotonic() - s, 6)}
        rounds.append(info)
        try:
            plan = parse_plan(plan_text, param_order=param_order)
            plan.validate(ctx.registry.tools)
        except PlanError as exc:
            info["error"] = str(exc)
            planner_msgs += [{"role": "assistant", "content": plan_text},
                             {"role": "user", "content": f"That plan cannot run: {exc}. Write a corrected plan."}]
            continue
        offset = ctx.elapsed_s
        ex = await ctx.plan(plan)
        for rec in ex.trace:
            j = rec.to_json()
            for k in ("start_s", "end_s"):
                j[k] = None if j[k] is None else round(j[k] + offset, 6)
            calls.append({"round": r, **j})
            observations.append(_observation(rec))
        s = time.monotonic()
        verdict = (await ask(joiner, _joiner_messages(question, observations, last))).text
        info.update(joiner=verdict, joiner_s=round(time.monotonic() - s, 6))
        action, content = _parse_joiner(verdict)
        if action == "Finish" or last:
            answer = content
            break
        planner_msgs += [{"role": "assistant", "content": plan_text},
                         {"role": "user", "content": "Results so far:\n" + "\n".join(observations)
                          + f"\nThat is not enough yet: {content}\nWrite a new plan for the next calls."}]
    if answer is None:  # no round both planned and joined: answer from what there is
        verdict = (await ask(joiner, _joiner_messages(question, observations, True))).text
        rounds.append({"round": len(rounds), "plan": None, "error": None, "planner_s": 0.0, "joiner": verdict})
        answer = _parse_joiner(verdict)[1]
    return answer


def _text(message: dict) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content or [])


def _joiner_messages(question: str, observations: list[str], last: bool) -> list[dict]:
    results = "\n".join(observations) or "(no tool results)"
    return [{"role": "system", "content": JOINER_PROMPT.format(replan="" if last else REPLAN)},
            {"role": "user", "content": f"Question: {question}\n\nTool results:\n{results}"}]


def _observation(rec) -> str:
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}"
                     for k, v in (rec.to_json()["args"] or {}).items())
    out = f"ERROR: {rec.error}" if rec.error else json.dumps(rec.to_json()["result"], ensure_ascii=False)
    return f"{rec.id}. {rec.tool}({args}) -> {out[:2000]}"


def _parse_joiner(text: str) -> tuple[str, str]:
    """("Finish" | "Replan", content) from the last `Action:`; the content ends at the last
    ")" (text after it is dropped; a reply cut off before it keeps all it has). Text
    without an Action is the answer itself."""
    m = _ACTION.match(text, max(text.rfind("Action:"), 0))
    if m is None:
        return "Finish", text.strip()
    content = m.group(2)
    return m.group(1), (content[:content.rfind(")")] if ")" in content else content).strip()
