"""Tools a server can run itself: typed Python functions, HTTP endpoints, a read-only SQL
query over SQLite, and a document search over texts embedded with MiniLM.

Contract: a :class:`Tool` has a `name`, a `description` and `parameters` (a JSON schema of
an object, computed once when the tool is made, as DSPy's `Tool(func)` does) and is called
with keyword arguments: `await tool(**args)`. Arguments are validated against the schema
first; a bad argument raises :class:`ToolArgumentError` (the caller's mistake: retrying
cannot help), any other failure raises :class:`ToolError` or the function's own exception.
Synchronous functions run in asyncio's worker threads (a pool of min(32, CPUs + 4)) so a
slow tool never blocks the event loop; a timeout stops waiting for one, not its thread. A
result over `max_result_bytes` as JSON (256 KiB by default) is a ToolError, before it can
reach a prompt.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import jsonschema


class ToolError(RuntimeError):
    """A tool ran and failed (HTTP error status, SQL error, ...)."""


class ToolArgumentError(ToolError):
    """The arguments do not fit the tool's parameters; retrying the same call cannot help."""


NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of an object: {"type": "object", "properties": {...}, ...}
    fn: Callable[..., Any] = field(repr=False)  # called with validated keyword arguments
    validate: Callable[[dict], dict] | None = field(default=None, repr=False)  # args -> args to pass
    # a result larger than this as JSON is a ToolError: it would flood the prompt it is meant for
    max_result_bytes: int = 256 * 2**10

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise ValueError(f"tool name {self.name!r} must match {NAME_RE.pattern}")
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name}: parameters must be a JSON schema with type 'object'")
        jsonschema.Draft202012Validator.check_schema(self.parameters)
        self._schema_check = jsonschema.Draft202012Validator(self.parameters)

    @classmethod
    def from_function(cls, func: Callable, *, name: str | None = None, description: str | None = None) -> "Tool":
        """A tool from a typed function: each parameter needs a type hint; its docstring's
        first paragraph is the description and Google-style `Args:` lines describe parameters."""
        from pydantic import ConfigDict, Field, create_model

        sig = inspect.signature(func)
        hints = get_type_hints(func)
        summary, arg_docs = _parse_docstring(inspect.getdoc(func) or "")
        fields = {}
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ValueError(f"{func.__name__}: *args/**kwargs cannot be described as a tool")
            if p.name not in hints:
                raise ValueError(f"{func.__name__}: parameter {p.name!r} needs a type hint")
            default = ... if p.default is p.empty else p.default
            fields[p.name] = (hints[p.name], Field(default, description=arg_docs.get(p.name)))
        model = create_model(f"{func.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)

        def validate(args: dict) -> dict:
            from pydantic import ValidationError

            try:
                parsed = model.model_validate(args)
            except ValidationError as exc:
                raise ToolArgumentError(f"{tool_name}: {_short(exc)}") from None
            return {k: getattr(parsed, k) for k in fields}

        tool_name = name or func.__name__
        return cls(tool_name, description or summary or tool_name, schema, func, validate)

    def spec(self) -> dict:
        """The OpenAI `tools` entry."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    async def __call__(self, **args) -> Any:
        if self.validate is not None:
            args = self.validate(args)
        else:
            error = jsonschema.exceptions.best_match(self._schema_check.iter_errors(args))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "arguments"
                raise ToolArgumentError(f"{self.name}: {where}: {error.message}")
        if inspect.iscoroutinefunction(self.fn):
            result = await self.fn(**args)
        else:
            result = await asyncio.to_thread(self.fn, **args)
            result = await result if inspect.isawaitable(result) else result
        size = len(json.dumps(result, default=str, ensure_ascii=False).encode())
        if size > self.max_result_bytes:
            raise ToolError(f"{self.name}: its result is {size} bytes as JSON, over the {self.max_result_bytes} "
                            "allowed")
        return result


class ToolRegistry:
    """Tools by name; a name is defined once."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self.tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: Tool) -> Tool:
        if tool.name in self.tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self.tools[tool.name] = tool
        return tool

    def __getitem__(self, name: str) -> Tool:
        if name not in self.tools:
            raise KeyError(f"no tool named {name!r}; known: {', '.join(sorted(self.tools)) or 'none'}")
        return self.tools[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def __iter__(self):
        return iter(self.tools.values())

    def __len__(self) -> int:
        return len(self.tools)

    def specs(self) -> list[dict]:
        return [t.spec() for t in self.tools.values()]


def python_tool(ref: str) -> Tool:
    """`"package.module:function"` -> Tool (the module is imported now)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"python tool reference {ref!r} must look like 'package.module:function'")
    func = getattr(importlib.import_module(module_name), attr, None)
    if not callable(func):
        raise ValueError(f"{ref}: {attr!r} is not a function of {module_name}")
    return Tool.from_function(func)


def http_tool(name: str, url: str, *, description: str, parameters: dict, method: str = "POST",
              headers: dict | None = None, timeout_s: float = 30.0, allow_private: bool = False,
              max_response_bytes: int = 2**20, max_redirects: int = 3, client: "Any | None" = None) -> Tool:
    """An HTTP endpoint: POST/PUT sends the arguments as a JSON body, GET/DELETE as query
    parameters. The answer is its JSON (or text); a status >= 400 raises ToolError.

    Bounded: the whole call within `timeout_s`, at most `max_response_bytes` read (more is a
    ToolError), at most `max_redirects` redirects. Unless `allow_private`, a target whose
    host resolves to a loopback, private, link-local or otherwise non-public address is
    refused, checked again at each redirect (the model's arguments cannot point the server
    at its own network). Not closed: a DNS answer that changes between the check and the
    connection."""
    import httpx

    method = method.upper()
    if method not in ("GET", "POST", "PUT", "DELETE"):
        raise ValueError(f"http tool {name}: method must be GET, POST, PUT or DELETE, got {method!r}")

    async def call(**args):
        kw = {"params": args} if method in ("GET", "DELETE") else {"json": args}
        own = client is None
        c = client or httpx.AsyncClient(timeout=timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                target, verb = url, method
                for _ in range(max_redirects + 1):
                    if not allow_private:
                        await _check_public(name, target)
                    async with c.stream(verb, target, headers=headers, timeout=timeout_s, follow_redirects=False,
                                        **kw) as resp:
                        if resp.is_redirect and "location" in resp.headers:
                            target = str(resp.url.join(resp.headers["location"]))
                            if resp.status_code == 303:
                                verb, kw = "GET", {}
                            continue
                        body = bytearray()
                        async for part in resp.aiter_bytes():
                            body += part
                            if len(body) > max_response_bytes:
                                raise ToolError(f"{name}: the answer is over {max_response_bytes} bytes")
                        break
                else:
                    raise ToolError(f"{name}: more than {max_redirects} redirects")
        except TimeoutError:
            raise ToolError(f"{name}: {method} {url} took over {timeout_s} s") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"{name}: {method} {url} failed: {type(exc).__name__}: {exc}") from None
        finally:
            if own:
                await c.aclose()
        text = body.decode(resp.encoding or "utf-8", errors="replace")
        if resp.status_code >= 400:
            raise ToolError(f"{name}: {method} {url} answered {resp.status_code}: {text[:300]}")
        if resp.headers.get("content-type", "").startswith("application/json"):
            return json.loads(text)
        return text

    return Tool(name, description, parameters, call)


async def _check_public(name: str, url: str) -> None:
    """ToolError unless every address `url`'s host resolves to is a public one."""
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(f"{name}: only http(s) URLs with a host are allowed, got {url!r}")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ToolError(f"{name}: cannot resolve {parts.hostname}: {exc}") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if not ip.is_global:
            raise ToolError(f"{name}: {parts.hostname} is a non-public address ({ip}); set allow_private to call it")


_SQL_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                getattr(sqlite3, "SQLITE_RECURSIVE", 33)}  # WITH RECURSIVE
_SQL_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)


def sql_tool(path: str | Path, *, name: str = "sql", row_limit: int = 100, time_limit_s: float = 5.0,
             max_value_bytes: int = 2**20, max_result_bytes: int = 64 * 2**10) -> Tool:
    """A read-only SQL query over a SQLite file. The database is opened read-only
    (`mode=ro`), only one SELECT (or WITH ... SELECT) statement is accepted, an authorizer
    refuses anything but reads, and what a query may use and return is bounded: no string or
    blob over `max_value_bytes` can be made (SQLite's length limit: `zeroblob(1e9)` fails at
    once), at most `row_limit` rows and about `max_result_bytes` of values come back
    (`truncated` says when more matched), and a query running past `time_limit_s` is
    interrupted from another thread (which also stops a single long function call)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ValueError(f"sql tool {name}: no SQLite database at {path}")
    uri = f"{path.as_uri()}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        tables = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table' "
                              "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
    conn.close()
    schema = "\n".join(sql for _, sql in tables)
    limits = {sqlite3.SQLITE_LIMIT_LENGTH: max_value_bytes, sqlite3.SQLITE_LIMIT_SQL_LENGTH: 100_000,
              sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 100, sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 50,
              sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 32, sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 1000}

    def run(query: str) -> dict:
        text = _SQL_COMMENT.sub(" ", query).strip().rstrip(";").strip()
        head = text.split(None, 1)[0].upper() if text else ""
        if head not in ("SELECT", "WITH") or ";" in text:
            raise ToolArgumentError(f"{name}: only a single SELECT statement is allowed")
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        timer = threading.Timer(time_limit_s, conn.interrupt)
        try:
            for limit, value in limits.items():
                conn.setlimit(limit, value)
            conn.set_authorizer(lambda action, *_: sqlite3.SQLITE_OK if action in _SQL_ALLOWED
                                else sqlite3.SQLITE_DENY)
            deadline = time.monotonic() + time_limit_s
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
            timer.start()
            rows, size, truncated = [], 0, False
            try:
                cur = conn.execute(text)
                for row in cur:
                    size += sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row)
                    if len(rows) == row_limit or size > max_result_bytes:
                        truncated = True
                        break
                    rows.append(list(row))
            except sqlite3.Error as exc:
                if time.monotonic() > deadline or isinstance(exc, sqlite3.OperationalError) and "interrupt" in str(exc):
                    raise ToolError(f"{name}: query ran past {time_limit_s} s") from None
                raise ToolArgumentError(f"{name}: {exc}") from None
            columns = [d[0] for d in cur.description or ()]
        finally:
            timer.cancel()
            conn.close()
        return {"columns": columns, "rows": rows, "truncated": truncated}

    description = (f"Run one read-only SQL SELECT on a SQLite database (at most {row_limit} rows). "
                   f"Tables:\n{schema}")
    params = {"type": "object", "properties": {"query": {"type": "string", "description": "one SELECT statement"}},
              "required": ["query"], "additionalProperties": False}
    return Tool(name, description, params, run)


def docs_tool(folder: str | Path, embedder, *, name: str = "search_docs", k: int = 3,
              chunk_chars: int = 800, description: str | None = None) -> Tool:
    """Semantic search over the .txt and .md files of a folder: each file is cut into
    paragraph chunks of at most ~`chunk_chars` characters, embedded once now with
    `embedder` (fleetlm.models.embeddings.Embedder); a query returns the `k` most similar
    chunks as [{"source", "text", "score"}], best first (score = cosine similarity)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    chunks = [(str(p.relative_to(folder)), c) for p in files for c in _chunks(p.read_text(), chunk_chars)]
    if not chunks:
        raise ValueError(f"docs tool {name}: no .txt or .md text under {folder}")
    matrix = embedder.embed([c for _, c in chunks]).vectors  # (N, dim), unit rows

    def search(query: str, top_k: int = k) -> list[dict]:
        if not query.strip():
            raise ToolArgumentError(f"{name}: query must not be empty")
        q = embedder.embed([query]).vectors[0]  # (dim,)
        scores = matrix @ q
        best = scores.argsort(descending=True)[: max(1, top_k)].tolist()
        return [{"source": chunks[i][0], "text": chunks[i][1], "score": round(float(scores[i]), 4)} for i in best]

    params = {"type": "object", "properties": {
        "query": {"type": "string", "description": "what to look for"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 20, "default": k}},
        "required": ["query"], "additionalProperties": False}
    return Tool(name, description or f"Search {len(files)} documents by meaning; returns the best passages.",
                params, search)


def _chunks(text: str, limit: int) -> list[str]:
    """Paragraphs (blank-line separated), merged while they fit in `limit` characters; a
    longer paragraph is cut at the limit."""
    out, cur = [], ""
    for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not para:
            continue
        while len(para) > limit:
            out.append(para[:limit])
            para = para[limit:]
        if cur and len(cur) + 2 + len(para) > limit:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        out.append(cur)
    return out


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(first paragraph, {param: description}) from a Google-style docstring."""
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    args, in_args = {}, False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            in_args = True
            continue
        if in_args:
            m = re.match(r"^\s+(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$", line)
            if m:
                args[m.group(1)] = m.group(2).strip()
            elif line.strip() and not line.startswith((" ", "\t")):
                in_args = False
    return summary, args


def _short(exc) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())

