"""The Batch API's routes in OpenAI's shapes, so `client.files.create(...)` and
`client.batches.create(...)` work unchanged:

    POST   /v1/files                  multipart: file (JSONL), purpose=batch   -> File
    GET    /v1/files                  -> list of File (the newest 10,000);  GET /v1/files/{id} -> File
    GET    /v1/files/{id}/content     -> the file's bytes
    DELETE /v1/files/{id}             -> {"id", "object": "file", "deleted": true}
    POST   /v1/batches                {input_file_id, endpoint, completion_window, metadata?} -> Batch
    GET    /v1/batches                ?limit=&after=  -> list of Batch;  GET /v1/batches/{id} -> Batch
    POST   /v1/batches/{id}/cancel    -> Batch (cancelling)

A tenant sees only its own files and batches; the master key sees all.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from fleetlm.openai.errors import BadRequestError
from fleetlm.tenants.files import FileStore
from fleetlm.tenants.runner import BatchRunner

UPLOAD_CHUNK = 1 << 20


class CreateBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(max_length=100)
    endpoint: str = Field(max_length=100)
    completion_window: str = Field(default="24h", max_length=16)
    metadata: dict[str, str] | None = None


def install_batches(app: FastAPI, files: FileStore, runner: BatchRunner) -> None:
    def caller(raw: Request):
        return raw.state.caller

    @app.post("/v1/files")
    async def upload(raw: Request) -> dict:
        form = await raw.form(max_files=1, max_fields=4)
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch":
            raise BadRequestError("purpose must be 'batch'", param="purpose")
        if upload is None or isinstance(upload, str):
            raise BadRequestError("send the file as multipart form field 'file'", param="file")

        async def chunks():
            while chunk := await upload.read(UPLOAD_CHUNK):
                yield chunk

        try:
            rec = await files.upload(caller(raw).key_id, purpose, upload.filename or "upload.jsonl", chunks())
        finally:
            await form.close()
        return rec.to_json()

    @app.get("/v1/files")
    async def list_files(raw: Request) -> dict:
        c = caller(raw)
        found = await files.list(c.key_id, master=c.is_master)  # newest first, at most LIST_LIMIT
        return {"object": "list", "data": [f.to_json() for f in found], "has_more": False,
                "first_id": found[0].id if found else None, "last_id": found[-1].id if found else None}

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, raw: Request) -> dict:
        c = caller(raw)
        return (await files.get(file_id, c.key_id, master=c.is_master)).to_json()

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, raw: Request):
        c = caller(raw)
        rec = await files.get(file_id, c.key_id, master=c.is_master)
        return FileResponse(rec.path, media_type="application/jsonl", filename=rec.filename)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, raw: Request) -> dict:
        c = caller(raw)
        rec = await files.delete(file_id, c.key_id, master=c.is_master)
        return {"id": rec.id, "object": "file", "deleted": True}

    @app.post("/v1/batches")
    async def create_batch(body: CreateBatchRequest, raw: Request) -> dict:
        b = await runner.create(caller(raw), body.input_file_id, body.endpoint, body.completion_window, body.metadata)
        return b.to_json()

    @app.get("/v1/batches")
    async def list_batches(raw: Request, limit: int = 20, after: str | None = None) -> dict:
        from fleetlm.tenants.batches import listed

        c = caller(raw)
        if not 1 <= limit <= 100:
            raise BadRequestError("limit must be 1-100", param="limit")
        found = await runner.db.run(listed, c.key_id, c.is_master, limit, after)
        return {"object": "list", "data": [b.to_json() for b in found],
                "first_id": found[0].id if found else None, "last_id": found[-1].id if found else None,
                "has_more": len(found) == limit}

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str, raw: Request) -> dict:
        return (await runner.get(caller(raw), batch_id)).to_json()

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, raw: Request) -> dict:
        return (await runner.cancel(caller(raw), batch_id)).to_json()
