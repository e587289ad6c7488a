"""The tool budget of local serving: a request with more tools than the budget keeps the
most relevant ones (`fleetlm.openai.tool_calls.tool_session(select=...)` calls this)."""

from __future__ import annotations

from fleetlm.openai.tool_prompt import FunctionTool, ToolChoice


def select_tools_for_budget(tools: list[FunctionTool], messages, choice: ToolChoice,
                            max_tools: int | None) -> list[FunctionTool]:
    """The tool budget hook: with more than `max_tools` tools, keep the `max_tools` most
    relevant to the last user message (`fleetlm.compound.tools.retrieval.select_tools`, its
    default BM25 ranking: no model to load on the request path), in their input order. A
    function named by tool_choice is always kept."""
    if max_tools is None or len(tools) <= max_tools:
        return tools
    from fleetlm.compound.tools.retrieval import select_tools

    query = next((m.text() for m in reversed(messages) if m.role == "user"), "")
    openai_tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                      "parameters": t.parameters}} for t in tools]
    keep = (choice.name,) if choice.mode == "named" else ()
    kept = {t["function"]["name"] for t in select_tools(query, openai_tools, max_tools=max_tools, keep=keep)}
    return [t for t in tools if t.name in kept]

