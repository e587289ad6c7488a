"""Files for the Batch API (`/v1/files`): uploads and batch output, one folder, rows in the
database.

Contract: a file is written under a temporary name and renamed into place only when whole
(so a crash or a refused upload never leaves half a file under a real id); an upload past
`max_bytes` is refused with a 413 and leaves nothing. A file belongs to the key that
uploaded it (or to the batch that wrote it): another tenant's file is a 404, the master key
sees every file.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

from fleetlm.openai.errors import APIError, NotFoundError
from fleetlm.tenants.db import Database, transaction

PURPOSES = ("batch", "batch_output")  # what /v1/files accepts from clients: "batch"


@dataclass
class FileRecord:
    id: str
    key_id: str | None
    purpose: str
    filename: str
    bytes: int
    created: float
    path: str

    def to_json(self) -> dict:
        """OpenAI's File object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created),
                "filename": self.filename, "purpose": self.purpose, "status": "processed"}


class FileStore:
    def __init__(self, db: Database, folder: str | Path, *, max_bytes: int):
        self.db, self.folder, self.max_bytes = db, Path(folder), max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)

    async def upload(self, key_id: str | None, purpose: str, filename: str,
                     chunks: AsyncIterator[bytes]) -> FileRecord:
        file_id = f"file-{secrets.token_hex(12)}"
        tmp = self.folder / f".{file_id}.part"
        size = 0
        try:
            with open(tmp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise APIError(413, f"file larger than {self.max_bytes} bytes", param="file")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.folder / file_id)
        finally:
            tmp.unlink(missing_ok=True)
        rec = FileRecord(file_id, key_id, purpose, filename[:255], size, time.time(), str(self.folder / file_id))
        await self.db.run(_insert, rec)
        return rec

    def write(self, conn: sqlite3.Connection, key_id: str | None, purpose: str, filename: str,
              lines: Iterable[str]) -> FileRecord:
        """A file from text lines (on the database thread: batch output)."""
        file_id = f"file-{secrets.token_hex(12)}"
        tmp, path = self.folder / f".{file_id}.part", self.folder / file_id
        with open(tmp, "w", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        rec = FileRecord(file_id, key_id, purpose, filename, path.stat().st_size, time.time(), str(path))
        _insert(conn, rec)
        return rec

    async def get(self, file_id: str, key_id: str | None, *, master: bool) -> FileRecord:
        rec = await self.db.run(_get, file_id)
        if rec is None or not (master or rec.key_id == key_id):
            raise NotFoundError(f"no file {file_id!r}", param="file_id", code="file_not_found")
        return rec

    async def list(self, key_id: str | None, *, master: bool) -> list[FileRecord]:
        return await self.db.run(_list, None if master else key_id, master)

    async def delete(self, file_id: str, key_id: str | None, *, master: bool) -> FileRecord:
        rec = await self.get(file_id, key_id, master=master)
        await self.db.run(_delete, rec.id)
        Path(rec.path).unlink(missing_ok=True)
        return rec


def _insert(conn: sqlite3.Connection, rec: FileRecord) -> None:
    with transaction(conn):
        conn.execute("INSERT INTO files (id, key_id, purpose, filename, bytes, created, path) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (rec.id, rec.key_id, rec.purpose, rec.filename, rec.bytes, rec.created, rec.path))


def _get(conn: sqlite3.Connection, file_id: str) -> FileRecord | None:
    row = conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
    return FileRecord(**dict(row)) if row else None


def _list(conn: sqlite3.Connection, key_id: str | None, master: bool) -> list[FileRecord]:
    if master:
        rows = conn.execute("SELECT * FROM files ORDER BY created DESC LIMIT 10000").fetchall()
    else:
        rows = conn.execute("SELECT * FROM files WHERE key_id = ? ORDER BY created DESC LIMIT 10000",
                            (key_id,)).fetchall()
    return [FileRecord(**dict(r)) for r in rows]


def _delete(conn: sqlite3.Connection, file_id: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
