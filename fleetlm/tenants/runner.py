"""Batches run in the background, behind interactive traffic, and survive a restart.

Contract:
- `create` validates the input file line by line (bad lines become error lines naming their
  line; the batch is refused only when the file itself cannot be used) and starts the batch;
- lines run through `answer` (the dispatch's own path: the key's allowlist and budget,
  admission, the ledger, billed at the batch discount) as background rows of the local engine
  (they sit out every step that computes an interactive prompt), at most `concurrency` at
  once across all batches, and one at a time while interactive requests are in flight;
- a line is retried while the server is at capacity (429 `rate_limit_exceeded`) and fails
  with any other error; each finished line is written at once, so a restarted server resumes
  every unfinished batch from the lines it lacks;
- `cancel` stops new lines; lines in flight finish; the output holds what was done.
When every line is done the batch's output and error files are written (`output_file_id`,
`error_file_id`) and it is `completed` (or `cancelled`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from fleetlm.openai.errors import APIError, BadRequestError, NotFoundError
from fleetlm.tenants import batches as rows
from fleetlm.tenants import keys as keydb
from fleetlm.tenants.batches import ENDPOINTS, Batch, error_line, output_line, parse_input
from fleetlm.tenants.files import FileStore
from fleetlm.tenants.gate import Caller

log = logging.getLogger("fleetlm.batch")
YIELD_POLL_S = 0.02  # how often a waiting line looks again for interactive traffic
CAPACITY_RETRY_S = 0.5
BACKGROUND = 1  # SamplingParams.priority of batch lines on the local engine


class BatchRunner:
    def __init__(self, db, files: FileStore, answer: Callable[..., Awaitable[tuple[int, dict]]], *,
                 concurrency: int, discount: float, max_lines: int, interactive: Callable[[], int]):
        self.db, self.files, self.answer = db, files, answer
        self.concurrency, self.discount, self.max_lines = concurrency, discount, max_lines
        self.interactive = interactive
        self.running = 0  # lines in flight, all batches
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancelled: set[str] = set()

    async def start(self) -> None:
        """Resume every unfinished batch (after a restart)."""
        for b in await self.db.run(rows.unfinished):
            log.info("resuming %s (%d/%d lines done)", b.id, b.completed + b.failed, b.total)
            self._spawn(b.id)

    async def stop(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # ---- the API ----------------------------------------------------------------------------
    async def create(self, caller: Caller, input_file_id: str, endpoint: str, window: str,
                     metadata: dict | None) -> Batch:
        if endpoint not in ENDPOINTS:
            raise BadRequestError(f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
        if window != "24h":
            raise BadRequestError("completion_window must be 24h", param="completion_window")
        if metadata is not None and (len(metadata) > 16 or not all(isinstance(v, str) and len(v) <= 512
                                                                   for v in metadata.values())):
            raise BadRequestError("metadata: at most 16 string values of 512 characters", param="metadata")
        rec = await self.files.get(input_file_id, caller.key_id, master=caller.is_master)
        if rec.purpose != "batch":
            raise BadRequestError(f"file {rec.id} has purpose {rec.purpose!r}, not 'batch'", param="input_file_id")
        parsed = await asyncio.to_thread(_parse, rec.path, endpoint)
        if parsed.total == 0:
            raise BadRequestError(f"file {rec.id} holds no requests", param="input_file_id")
        if parsed.total > self.max_lines:
            raise BadRequestError(f"file {rec.id} holds {parsed.total} requests; a batch may hold {self.max_lines}",
                                  param="input_file_id")
        b = rows.new_batch(caller.key_id, rec.id, endpoint, window, metadata)
        b.total, b.status, b.in_progress_at = parsed.total, "in_progress", time.time()

        def store(conn):
            rows.save(conn, b)
            for number, custom_id, message in parsed.errors:
                rows.record_line(conn, b.id, number, custom_id or "", 400, error_line(
                    number, custom_id, None, {"code": "invalid_request", "message": message}), False)

        await self.db.run(store)
        self._spawn(b.id)
        return await self.db.run(rows.load, b.id)

    async def get(self, caller: Caller, batch_id: str) -> Batch:
        b = await self.db.run(rows.load, batch_id)
        if b is None or not (caller.is_master or b.key_id == caller.key_id):
            raise NotFoundError(f"no batch {batch_id!r}", param="batch_id", code="batch_not_found")
        return b

    async def cancel(self, caller: Caller, batch_id: str) -> Batch:
        b = await self.get(caller, batch_id)
        if b.status in ("validating", "in_progress"):
            b.status, b.cancelling_at = "cancelling", time.time()
            await self.db.run(rows.save, b)
            self._cancelled.add(batch_id)
        return await self.db.run(rows.load, batch_id)

    # ---- running ----------------------------------------------------------------------------
    def _spawn(self, batch_id: str) -> None:
        task = asyncio.create_task(self._run(batch_id), name=f"fleetlm-{batch_id}")
        self._tasks[batch_id] = task
        task.add_done_callback(lambda t: self._done(batch_id, t))

    def _done(self, batch_id: str, task: asyncio.Task) -> None:
        self._tasks.pop(batch_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped: %r (it resumes at the next start)", batch_id, task.exception())

    async def _run(self, batch_id: str) -> None:
        b = await self.db.run(rows.load, batch_id)
        if b.status in ("validating", "in_progress"):
            caller = await self._caller(b)
            try:
                parsed = await asyncio.to_thread(_parse, await self.db.run(_input_path, b.input_file_id), b.endpoint)
            except (OSError, APIError, LookupError) as exc:  # the input file was deleted or damaged
                b.status, b.failed_at = "failed", time.time()
                b.errors = [{"code": "input_file_unreadable", "message": str(exc), "line": None, "param": None}]
                await self.db.run(rows.save, b)
                return
            done = await self.db.run(rows.done_lines, batch_id)
            kind = ENDPOINTS[b.endpoint][0]
            lines: set[asyncio.Task] = set()
            for line in parsed.lines:
                if batch_id in self._cancelled:
                    break
                if line.number in done:
                    continue
                await self._slot()
                self.running += 1
                task = asyncio.create_task(self._line(b, caller, kind, line))
                lines.add(task)
                task.add_done_callback(lines.discard)
            if lines:
                await asyncio.gather(*lines)
        await self.db.run(self._finalize, batch_id)
        self._cancelled.discard(batch_id)

    async def _slot(self) -> None:
        """Wait for room: `concurrency` lines, or one while interactive requests are in flight."""
        while self.running >= (1 if self.interactive() > 0 else self.concurrency):
            await asyncio.sleep(YIELD_POLL_S)

    async def _line(self, b: Batch, caller: Caller | None, kind: str, line) -> None:
        try:
            if caller is None:
                status, body = 401, {"error": {"message": "the batch's key is revoked or expired",
                                               "code": "invalid_api_key"}}
            else:
                while True:
                    status, body = await self.answer(caller, kind, line.request, batch_id=b.id,
                                                     discount=self.discount, priority=BACKGROUND)
                    if status != 429 or body["error"].get("code") != "rate_limit_exceeded" \
                            or b.id in self._cancelled:
                        break
                    await asyncio.sleep(CAPACITY_RETRY_S)  # the server is full: wait, never fail the line
            ok = status == 200
            text = output_line(line.custom_id, status, body) if ok else \
                error_line(line.number, line.custom_id, status, body["error"])
            await self.db.run(rows.record_line, b.id, line.number, line.custom_id, status, text, ok)
        finally:
            self.running -= 1

    async def _caller(self, b: Batch) -> Caller | None:
        if b.key_id is None:
            return Caller(None)
        key = await self.db.run(keydb.find_key, b.key_id)
        return Caller(key) if key is not None and key.state() == "active" else None

    def _finalize(self, conn, batch_id: str) -> None:
        b = rows.load(conn, batch_id)
        now = time.time()
        b.finalizing_at = b.finalizing_at or now
        out, err = rows.results(conn, batch_id, True), rows.results(conn, batch_id, False)
        if out and b.output_file_id is None:
            b.output_file_id = self.files.write(conn, b.key_id, "batch_output", f"{batch_id}_output.jsonl", out).id
        if err and b.error_file_id is None:
            b.error_file_id = self.files.write(conn, b.key_id, "batch_output", f"{batch_id}_errors.jsonl", err).id
        if b.status == "cancelling":
            b.status, b.cancelled_at = "cancelled", now
        else:
            b.status, b.completed_at = "completed", now
        rows.save(conn, b)
        log.info("%s %s: %d completed, %d failed", batch_id, b.status, b.completed, b.failed)


def _parse(path: str, endpoint: str):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the input file is not UTF-8 text ({exc.reason} at byte {exc.start})",
                       param="input_file_id") from None
    return parse_input(text, endpoint)


def _input_path(conn, file_id: str) -> str:
    row = conn.execute("SELECT path FROM files WHERE id = ?", (file_id,)).fetchone()
    if row is None:
        raise LookupError(f"input file {file_id} was deleted")
    return row[0]
