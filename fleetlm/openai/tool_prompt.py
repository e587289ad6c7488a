"""OpenAI `tools` / `tool_choice` / tool messages -> checked specs and chat-template messages.

Contract: `parse_tools` and `parse_tool_choice` raise `APIError` (400, OpenAI-shaped, naming
the field) for anything malformed; `render_messages` turns an OpenAI conversation that may
hold `assistant.tool_calls` and `tool` messages into plain {"role", "content"} messages that
any chat template can format (Gemma's only knows user/model turns that alternate).

The prompt format (Hermes / Qwen style, plain text: Gemma has no tool tokens):

- The tool list goes at the end of the system message (one is added when there is none):
  "# Tools", a line of instructions, `<tools>`, one compact JSON object per function
  (`{"name","description","parameters"}`) per line, `</tools>`, then how to call and what
  the request allows (a call is required / this function must be called / at most one call).
  Under tool_choice "none" the block is left out and nothing is parsed as a call.
- A call is written `<tool_call>{"name":"NAME","arguments":{...}}</tool_call>`; several calls
  are separated by one newline. Assistant messages with `tool_calls` are rendered this way
  after their text content, exactly as the model is asked to write them.
- A `tool` message becomes a user turn `<tool_response>{"name":...,"content":...}</tool_response>`
  (the name found through `tool_call_id`); consecutive tool results, and a user message next
  to them, are merged into one user turn so that turns still alternate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from fleetlm.openai.errors import APIError

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
NAME_PATTERN = r"[A-Za-z0-9_.\-]{1,64}"  # OpenAI's pattern, plus "." (BFCL names use it)
_NAME_RE = re.compile(NAME_PATTERN)
MODES = ("auto", "none", "required", "named")


@dataclass(frozen=True)
class FunctionTool:
    """One callable function. parameters: its JSON schema for the arguments (an object schema)."""

    name: str
    description: str
    parameters: dict

    def prompt_json(self) -> str:
        return json.dumps({"name": self.name, "description": self.description, "parameters": self.parameters},
                          ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class ToolChoice:
    """mode: "auto" (text or calls), "none" (text only), "required" (>= 1 call), "named"
    (calls of `name` only)."""

    mode: str
    name: str | None = None


def parse_tools(tools: list[dict]) -> list[FunctionTool]:
    """OpenAI `tools` -> FunctionTools, checked: function type, unique valid names, object
    schemas that are valid JSON Schema."""
    import jsonschema

    if not tools:
        raise APIError(400, "tools must be a non-empty list (omit it for no tools)", param="tools")
    out: list[FunctionTool] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise APIError(400, f"{where}: only {{'type': 'function', 'function': {{...}}}} tools are supported",
                           param=where)
        fn = tool["function"]
        unknown = set(tool) - {"type", "function"} or set(fn) - {"name", "description", "parameters", "strict"}
        if unknown:
            raise APIError(400, f"{where}: unknown field(s) {sorted(unknown)}", param=where)
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise APIError(400, f"{where}.function.name must match {NAME_PATTERN}, got {name!r}",
                           param=f"{where}.function.name")
        if any(t.name == name for t in out):
            raise APIError(400, f"{where}: duplicate function name {name!r}", param=f"{where}.function.name")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise APIError(400, f"{where}.function.description must be a string", param=f"{where}.function")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise APIError(400, f"{where}.function.parameters must be a JSON schema of type 'object'",
                           param=f"{where}.function.parameters")
        try:
            jsonschema.validators.validator_for(params).check_schema(params)
        except jsonschema.SchemaError as e:
            raise APIError(400, f"{where}.function.parameters is not a valid JSON schema: {e.message}",
                           param=f"{where}.function.parameters") from None
        out.append(FunctionTool(name, description, params))
    return out


def parse_tool_choice(choice, tools: list[FunctionTool]) -> ToolChoice:
    """OpenAI `tool_choice` (None -> "auto") -> ToolChoice; a named function must be in tools."""
    if choice is None:
        return ToolChoice("auto")
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice)
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if not any(t.name == name for t in tools):
            raise APIError(400, f"tool_choice names function {name!r}, which is not in tools", param="tool_choice")
        return ToolChoice("named", name)
    raise APIError(400, "tool_choice must be 'auto', 'none', 'required' or "
                        "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")


def system_block(tools: list[FunctionTool], choice: ToolChoice, parallel: bool) -> str:
    """The text appended to the system message (see the module docstring)."""
    rule = {"auto": "If no function fits, answer in plain text.",
            "required": "You must call at least one function.",
            "named": f"You must call {choice.name}."}[choice.mode]
    if not parallel:
        rule += " Call at most one function."
    listing = "\n".join(t.prompt_json() for t in tools)
    return (f"# Tools\nYou may call these functions (JSON schemas, one per line):\n<tools>\n{listing}\n</tools>\n"
            f'To call functions, reply with one {CALL_OPEN}{{"name":"<name>","arguments":{{...}}}}{CALL_CLOSE} '
            f"per call, one per line. {rule}")


def render_call(name: str, arguments_json: str) -> str:
    """One call exactly as the grammar makes the model write it (arguments compact JSON)."""
    return f'{CALL_OPEN}{{"name":{json.dumps(name)},"arguments":{arguments_json}}}{CALL_CLOSE}'


def render_messages(messages, block: str | None) -> list[dict]:
    """Request messages (protocol.ChatMessage) -> [{"role", "content"}] for the chat template;
    `block` (the tool list, or None) is appended to the system message."""
    out: list[dict] = []
    from_tool: list[bool] = []  # parallel to out: does the turn hold a tool result?
    names: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant messages
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        text = m.text()
        if role == "assistant" and m.tool_calls:
            calls = [_history_call(c, f"messages[{i}].tool_calls[{j}]", names) for j, c in enumerate(m.tool_calls)]
            text = "\n".join(([text] if text else []) + calls)
        is_tool = role == "tool"
        if is_tool:
            if m.tool_call_id is None or m.tool_call_id not in names:
                raise APIError(400, f"messages[{i}]: tool message with tool_call_id {m.tool_call_id!r} does not "
                                    "answer a tool call of an earlier assistant message", param=f"messages[{i}]")
            payload = {"name": names[m.tool_call_id], "content": text}
            role, text = "user", f"<tool_response>{json.dumps(payload, ensure_ascii=False)}</tool_response>"
        if out and role == "user" == out[-1]["role"] and (is_tool or from_tool[-1]):
            out[-1]["content"] += "\n\n" + text
            from_tool[-1] = True
            continue
        out.append({"role": role, "content": text})
        from_tool.append(is_tool)
    if block is not None:
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{block}" if out[0]["content"] else block
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _history_call(call, where: str, names: dict[str, str]) -> str:
    """An OpenAI tool call from an assistant message -> its prompt text (records id -> name)."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not (isinstance(fn, dict) and isinstance(call.get("id"), str) and call.get("type", "function") == "function"
            and isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(fn.get("arguments"), str)):
        raise APIError(400, f"{where} must be {{'id': str, 'type': 'function', 'function': "
                            "{'name': str, 'arguments': str}}", param=where)
    try:
        args = json.loads(fn["arguments"])
    except json.JSONDecodeError:
        raise APIError(400, f"{where}.function.arguments is not valid JSON", param=where) from None
    if not isinstance(args, dict):
        raise APIError(400, f"{where}.function.arguments must be a JSON object", param=where)
    names[call["id"]] = fn["name"]
    return render_call(fn["name"], json.dumps(args, ensure_ascii=False, separators=(",", ":")))
