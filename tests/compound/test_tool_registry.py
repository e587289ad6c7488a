"""Tool registry: typed Python functions -> JSON schema, HTTP endpoints (a real server on
127.0.0.1), the read-only SQLite tool, and document search with the real MiniLM."""

import asyncio
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qs, urlparse

import pytest

from fleetlm.compound.tools.registry import (
    Tool,
    ToolArgumentError,
    ToolError,
    ToolRegistry,
    docs_tool,
    http_tool,
    python_tool,
    sql_tool,
)


def convert(amount: float, currency: Literal["EUR", "USD"], rounding: int = 2) -> dict:
    """Convert an amount of money.

    Args:
        amount: how much money
        currency: the target currency
        rounding: decimal places kept
    """
    return {"value": round(amount * (0.5 if currency == "EUR" else 2.0), rounding), "currency": currency}


async def slow_echo(text: str) -> str:
    """Echo after a short wait."""
    await asyncio.sleep(0.01)
    return text


def run(coro):
    return asyncio.run(coro)


def test_function_schema_from_type_hints_and_docstring():
    tool = Tool.from_function(convert)
    assert tool.name == "convert" and tool.description == "Convert an amount of money."
    p = tool.parameters
    assert p["type"] == "object" and p["required"] == ["amount", "currency"]
    assert p["properties"]["amount"] == {"type": "number", "description": "how much money"}
    assert p["properties"]["currency"]["enum"] == ["EUR", "USD"]
    assert p["properties"]["rounding"]["default"] == 2 and p["properties"]["rounding"]["type"] == "integer"
    assert tool.spec() == {"type": "function", "function": {"name": "convert", "description": tool.description,
                                                            "parameters": p}}


def test_function_call_validates_arguments():
    tool = Tool.from_function(convert)
    assert run(tool(amount=3, currency="EUR")) == {"value": 1.5, "currency": "EUR"}
    with pytest.raises(ToolArgumentError, match="currency"):
        run(tool(amount=3, currency="GBP"))
    with pytest.raises(ToolArgumentError, match="amount"):
        run(tool(currency="EUR"))
    with pytest.raises(ToolArgumentError, match="colour"):
        run(tool(amount=1, currency="EUR", colour="red"))
    assert run(Tool.from_function(slow_echo)(text="hi")) == "hi"


def test_untyped_functions_and_bad_refs_are_rejected():
    def untyped(x):
        return x

    with pytest.raises(ValueError, match="type hint"):
        Tool.from_function(untyped)
    with pytest.raises(ValueError, match="module:function"):
        python_tool("no_colon_here")
    with pytest.raises(ValueError, match="not a function"):
        python_tool("tests.compound.test_tool_registry:nothing")
    tool = python_tool("tests.compound.test_tool_registry:convert")
    assert tool.name == "convert"
    with pytest.raises(ValueError, match="must match"):
        Tool("bad name", "d", {"type": "object"}, convert)


def test_registry_names_are_unique():
    reg = ToolRegistry([Tool.from_function(convert)])
    assert "convert" in reg and len(reg) == 1 and reg.specs()[0]["function"]["name"] == "convert"
    with pytest.raises(ValueError, match="twice"):
        reg.add(Tool.from_function(convert))
    with pytest.raises(KeyError, match="known: convert"):
        reg["missing"]


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
        conn.executemany("INSERT INTO items (name, price) VALUES (?, ?)", [(f"item{i}", i * 1.5) for i in range(30)])
    conn.close()
    return path


def test_sql_tool_reads_with_row_limit(db):
    tool = sql_tool(db, row_limit=5)
    assert "CREATE TABLE items" in tool.description
    out = run(tool(query="SELECT name, price FROM items WHERE price > 3 ORDER BY id"))
    assert out["columns"] == ["name", "price"] and out["rows"][0] == ["item3", 4.5]
    assert len(out["rows"]) == 5 and out["truncated"] is True
    out = run(tool(query="-- a comment\nWITH c AS (SELECT count(*) AS n FROM items) SELECT n FROM c;"))
    assert out == {"columns": ["n"], "rows": [[30]], "truncated": False}


@pytest.mark.parametrize("query", [
    "DELETE FROM items",
    "SELECT 1; DROP TABLE items",
    "WITH c AS (SELECT 1) INSERT INTO items (name, price) SELECT 'x', 1 FROM c",
    "PRAGMA writable_schema = 1",
    "ATTACH DATABASE ':memory:' AS other",
])
def test_sql_tool_refuses_writes(db, query):
    tool = sql_tool(db)
    with pytest.raises(ToolArgumentError):
        run(tool(query=query))
    assert run(tool(query="SELECT count(*) FROM items"))["rows"] == [[30]]


def test_sql_tool_interrupts_long_queries(db):
    tool = sql_tool(db, time_limit_s=0.2)
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT max(x) FROM n"
    with pytest.raises(ToolError, match="ran past"):
        run(tool(query=endless))
    with pytest.raises(ValueError, match="no SQLite database"):
        sql_tool(db.parent / "missing.db")


def test_sql_tool_bounds_what_a_query_may_build_and_return(db):
    import resource

    tool = sql_tool(db, max_value_bytes=2**20, max_result_bytes=4096, time_limit_s=2)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for query in ("SELECT zeroblob(1000000000)", "SELECT replace(hex(zeroblob(100000000)), '0', 'x')"):
        t0 = time.monotonic()
        with pytest.raises(ToolArgumentError, match="too big"):
            run(tool(query=query))
        assert time.monotonic() - t0 < 1.0, query  # refused at once, not after building it
    assert run(tool(query="SELECT length(printf('%.*c', 100000000, 'x'))"))["rows"] == [[None]]  # SQLite gives up
    out = run(tool(query="SELECT printf('%.*c', 1000, 'x') FROM items"))  # 30 rows of 1,000 bytes
    assert out["truncated"] is True and 1 <= len(out["rows"]) <= 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000  # KiB: no GB-sized value was made


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/fail":
            return self._send(500, {"error": "boom"})
        if url.path == "/redirect":
            self.send_response(302)
            self.send_header("location", "/weather")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if url.path == "/big":
            return self._send(200, {"data": "x" * 100_000})
        if url.path == "/slow":
            time.sleep(1.5)
            return self._send(200, {})
        self._send(200, {"method": "GET", "query": {k: v[0] for k, v in parse_qs(url.query).items()}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self._send(200, {"method": "POST", "body": body, "auth": self.headers.get("x-key")})


@pytest.fixture(scope="module")
def http_base():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_tool_post_get_and_errors(http_base):
    params = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["city"], "additionalProperties": False}
    local = {"allow_private": True}  # the test server is on loopback
    post = http_tool("weather", f"{http_base}/weather", description="w", parameters=params, headers={"x-key": "k"},
                     **local)
    assert run(post(city="Oslo", days=2)) == {"method": "POST", "body": {"city": "Oslo", "days": 2}, "auth": "k"}
    get = http_tool("weather_get", f"{http_base}/weather", method="get", description="w", parameters=params, **local)
    assert run(get(city="Oslo"))["query"] == {"city": "Oslo"}
    with pytest.raises(ToolArgumentError, match="days"):
        run(post(city="Oslo", days="two"))
    with pytest.raises(ToolError, match="500"):
        run(http_tool("f", f"{http_base}/fail", method="GET", description="f", parameters=params, **local)(city="x"))
    with pytest.raises(ToolError, match="failed"):
        run(http_tool("down", "http://127.0.0.1:9/x", description="d", parameters=params, timeout_s=2,
                      **local)(city="x"))
    with pytest.raises(ValueError, match="method"):
        http_tool("p", http_base, method="PATCH", description="d", parameters=params)


def test_http_tool_refuses_private_targets_and_bounds_answers(http_base):
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    for url in (f"{http_base}/weather", "http://localhost:9/x", "http://169.254.169.254/latest/meta-data",
                "http://10.0.0.1/x", "http://[::1]:9/x", "file:///etc/passwd"):
        with pytest.raises(ToolError, match="non-public|only http"):
            run(http_tool("t", url, method="GET", description="d", parameters=params)(city="x"))
    # redirects are bounded (each hop is checked like the first)
    hop = http_tool("hop", f"{http_base}/redirect", method="GET", description="d", parameters=params,
                    allow_private=True, max_redirects=0)
    with pytest.raises(ToolError, match="more than 0 redirects"):
        run(hop(city="x"))
    big = http_tool("big", f"{http_base}/big", method="GET", description="d", parameters=params,
                    allow_private=True, max_response_bytes=10_000)
    with pytest.raises(ToolError, match="over 10000 bytes"):
        run(big(city="x"))
    slow = http_tool("slow", f"{http_base}/slow", method="GET", description="d", parameters=params,
                     allow_private=True, timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(ToolError, match="took over 0.3 s|failed"):
        run(slow(city="x"))
    assert time.monotonic() - t0 < 2


def test_tool_results_are_capped_before_they_reach_a_prompt():
    def flood(n: int) -> str:
        """Return n bytes."""
        return "x" * n

    tool = Tool.from_function(flood)
    assert run(tool(n=10)) == "x" * 10
    with pytest.raises(ToolError, match="over the 262144 allowed"):
        run(tool(n=10**6))


def test_docs_tool_finds_the_relevant_passage(tmp_path):
    from fleetlm.models.embeddings import Embedder, EmbeddingModelUnavailable

    try:
        embedder = Embedder()
    except EmbeddingModelUnavailable as exc:
        pytest.skip(str(exc))
    (tmp_path / "volcano.md").write_text("Volcanoes erupt molten lava and ash.\n\nMount Etna is in Sicily.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bread.txt").write_text("Bread is baked from flour, water and yeast in an oven.")
    (tmp_path / "ignored.csv").write_text("a,b\n1,2")
    tool = docs_tool(tmp_path, embedder, k=2, chunk_chars=40)
    hits = run(tool(query="how do you bake a loaf?"))
    assert len(hits) == 2 and hits[0]["source"] == "sub/bread.txt" and hits[0]["score"] > hits[1]["score"]
    assert run(tool(query="eruption of lava", top_k=1))[0]["source"] == "volcano.md"
    with pytest.raises(ToolArgumentError):
        run(tool(query="   "))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt or .md"):
        docs_tool(tmp_path / "empty", embedder)
