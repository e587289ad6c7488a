"""`compound/<name>` (e.g. `compound/tool-agent`): an LLMCompiler-style agent over the
server's own tools, served as an ordinary chat model.

One request runs up to `max_rounds` rounds of: the planner model (any catalog Target) writes
a plan in `fleetlm.compound.tools.plan`'s format -> the DAG executor runs it (independent
calls concurrently) -> the joiner model (the same or another Target) reads the results and
answers (`Action: Finish(...)`) or asks for another round (`Action: Replan(...)`). A plan
that cannot be parsed is sent back to the planner with the error. The last round's joiner
must answer. Sub-models are any catalog Targets (a local model, an upstream server, a
router): the agent consumes their chunks as values (`collect_chat`).

Contract: the agent yields two chunks (the answer, then the finish with usage summed over the
planner and joiner calls and each of those calls as a `SubCall`), plus `fleetlm_trace`:
{"rounds": [{"round", "plan", "error", "planner_s", "joiner", "joiner_s"}], "calls": [each
call's id, round, tool, args, start_s/end_s (seconds since the request started), duration_s,
attempts, error, result], "wall_s"}. The client's `tools` are refused: the agent's tools are
configured on the server.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator

from fleetlm.compound.tools.executor import ExecutorConfig, execute
from fleetlm.compound.tools.plan import PlanError, parse_plan
from fleetlm.compound.tools.registry import ToolRegistry, docs_tool, http_tool, python_tool, sql_tool
from fleetlm.config import ToolAgentConfig
from fleetlm.openai.chunks import ChatChunk, ChatDelta, ModelCard, SubCall, Usage, collect_chat
from fleetlm.openai.errors import APIError, UnsupportedError
from fleetlm.openai.protocol import ChatCompletionRequest


def build_tools(cfg: ToolAgentConfig, *, embedder=None) -> ToolRegistry:
    """The configured tools; the docs tool embeds its folder now (MiniLM, loaded if not given)."""
    reg = ToolRegistry(python_tool(ref) for ref in cfg.tools)
    for h in cfg.http:
        reg.add(http_tool(h.name, h.url, description=h.description, parameters=h.parameters, method=h.method,
                          headers=h.headers, timeout_s=h.timeout_s if h.timeout_s is not None else cfg.call_timeout_s))
    if cfg.sqlite:
        reg.add(sql_tool(cfg.sqlite))
    if cfg.docs:
        if embedder is None:
            from fleetlm.models.embeddings import Embedder

            embedder = Embedder()
        reg.add(docs_tool(cfg.docs, embedder))
    return reg


def build_tool_agent(cfg: ToolAgentConfig, by_id: dict, *, embedder=None, tools: ToolRegistry | None = None):
    """A ToolAgentTarget over already-built catalog Targets (`by_id`: model id -> Target)."""
    missing = sorted(m for m in {cfg.planner, cfg.joiner or cfg.planner} if m not in by_id)
    if missing:
        raise ValueError(f"tool agent {cfg.name}: unknown model ids {missing}")
    return ToolAgentTarget(cfg, by_id[cfg.planner], by_id[cfg.joiner or cfg.planner],
                           tools if tools is not None else build_tools(cfg, embedder=embedder))


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


class ToolAgentTarget:
    def __init__(self, cfg: ToolAgentConfig, planner, joiner, tools: ToolRegistry):
        self.cfg, self.planner, self.joiner, self.tools = cfg, planner, joiner, tools
        self.model_id = f"compound/{cfg.name}"
        self.executor = ExecutorConfig(call_timeout_s=cfg.call_timeout_s, retries=cfg.retries)
        self.param_order = {t.name: list(t.parameters.get("properties", {})) for t in tools}
        first = next(iter(tools), None)
        example = f"{first.name}({next(iter(self.param_order[first.name]), 'arg')}" if first else "tool(arg"
        self.planner_prompt = PLANNER_PROMPT.format(tools="\n".join(describe_tool(t) for t in tools),
                                                    example=example)

    def card(self) -> ModelCard:
        return ModelCard(self.model_id, planner=self.planner.model_id, joiner=self.joiner.model_id,
                         tools=[t.name for t in self.tools])

    def engines(self) -> frozenset[str]:
        return self.planner.engines() | self.joiner.engines()

    async def complete(self, req) -> AsyncIterator:
        raise UnsupportedError(f"{self.model_id} is a chat model; use /v1/chat/completions", param="model")
        yield  # an async generator, like every Target's complete()

    async def chat(self, req) -> AsyncIterator[ChatChunk]:
        for name, bad in (("tools", req.tools), ("n", req.n != 1), ("logprobs", req.logprobs),
                          ("response_format", req.response_format is not None and req.response_format.type != "text")):
            if bad:
                raise UnsupportedError(f"{self.model_id} does not support `{name}` (its tools are configured on "
                                      "the server, and it answers with one text message)", param=name)
        answer, trace, calls = await self.run(req)
        usage = sum((Usage(c.usage.prompt_tokens, c.usage.completion_tokens, None, c.usage.cost_usd) for c in calls),
                    Usage())
        yield ChatChunk(served_by=self.model_id, choices=[ChatDelta(0, role="assistant", content=answer)])
        yield ChatChunk(served_by=self.model_id, choices=[ChatDelta(0, finish_reason="stop")], usage=usage,
                        extra={"fleetlm_trace": trace}, calls=calls)

    async def run(self, req) -> tuple[str, dict, list[SubCall]]:
        """(answer, trace, the planner and joiner calls made) for one chat request."""
        t0 = time.monotonic()
        calls_made: list[SubCall] = []
        system = [m.text() for m in req.messages if m.role in ("system", "developer")]
        convo = [{"role": m.role, "content": m.text()} for m in req.messages if m.role in ("user", "assistant")]
        question = next((m["content"] for m in reversed(convo) if m["role"] == "user"), "")
        planner_msgs = [{"role": "system", "content": "\n\n".join([self.planner_prompt, *system])}, *convo]
        rounds, calls, observations, answer = [], [], [], None
        for r in range(self.cfg.max_rounds):
            last = r == self.cfg.max_rounds - 1
            s = time.monotonic()
            plan_text = await self._ask(self.planner, planner_msgs, calls_made)
            info = {"round": r, "plan": plan_text, "error": None, "planner_s": round(time.monotonic() - s, 6)}
            rounds.append(info)
            try:
                plan = parse_plan(plan_text, param_order=self.param_order)
                plan.validate(self.tools.tools)
            except PlanError as exc:
                info["error"] = str(exc)
                planner_msgs += [{"role": "assistant", "content": plan_text},
                                 {"role": "user", "content": f"That plan cannot run: {exc}. Write a corrected plan."}]
                continue
            offset = time.monotonic() - t0
            ex = await execute(plan, self.tools.tools, self.executor)
            for rec in ex.trace:
                j = rec.to_json()
                for k in ("start_s", "end_s"):
                    j[k] = None if j[k] is None else round(j[k] + offset, 6)
                calls.append({"round": r, **j})
                observations.append(_observation(rec))
            s = time.monotonic()
            verdict = await self._ask(self.joiner, self._joiner_messages(question, observations, last), calls_made)
            info.update(joiner=verdict, joiner_s=round(time.monotonic() - s, 6))
            action, content = _parse_joiner(verdict)
            if action == "Finish" or last:
                answer = content
                break
            planner_msgs += [{"role": "assistant", "content": plan_text},
                             {"role": "user", "content": "Results so far:\n" + "\n".join(observations)
                              + f"\nThat is not enough yet: {content}\nWrite a new plan for the next calls."}]
        if answer is None:  # no round both planned and joined: answer from what there is
            verdict = await self._ask(self.joiner, self._joiner_messages(question, observations, True), calls_made)
            rounds.append({"round": len(rounds), "plan": None, "error": None, "planner_s": 0.0, "joiner": verdict})
            answer = _parse_joiner(verdict)[1]
        return answer, {"rounds": rounds, "calls": calls, "wall_s": round(time.monotonic() - t0, 6)}, calls_made

    def _joiner_messages(self, question: str, observations: list[str], last: bool) -> list[dict]:
        results = "\n".join(observations) or "(no tool results)"
        return [{"role": "system", "content": JOINER_PROMPT.format(replan="" if last else REPLAN)},
                {"role": "user", "content": f"Question: {question}\n\nTool results:\n{results}"}]

    async def _ask(self, target, messages: list[dict], calls_made: list[SubCall]) -> str:
        """One non-streamed chat call to a catalog Target: its text; the call is recorded."""
        sub = ChatCompletionRequest(model=target.model_id, messages=messages, max_tokens=self.cfg.max_tokens,
                                    temperature=0)
        try:
            result = await collect_chat(target.chat(sub))
        except APIError as exc:
            raise APIError(exc.status if exc.status < 500 else 502,
                           f"{self.model_id}: {target.model_id} failed (HTTP {exc.status}): {exc.message}") from None
        calls_made.append(SubCall(target.model_id, result.served_by, result.usage))
        return result.text


def _observation(rec) -> str:
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in (rec.to_json()["args"] or {}).items())
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
