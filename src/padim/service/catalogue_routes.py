"""The catalogue's HTTP routes (a service started with a catalogue): the registry (products,
versions, promote, roll back, the audit trail), the inspection records (query, export, kept
images) and the API tokens. Each route says the role it needs (`padim.service.access`)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from padim import options
from padim.errors import NotFound, PadimError
from padim.lifecycle.audit import read_events
from padim.lifecycle.feedback import FeedbackBook
from padim.lifecycle.records import Query, csv_text, parse_time, write_parquet
from padim.lifecycle.retrain import Retraining
from padim.lifecycle.tokens import ROLES
from padim.options import FEEDBACK_LABELS
from padim.service.access import READ, actor, require
from padim.service.catalogue import Lifecycle
from padim.service.requests import ApiError
from padim.service.routes import PAGE_HEADERS, web_root

router = APIRouter()
MAX_RECORDS = 100_000  # one page of records


def life_of(request: Request) -> Lifecycle:
    life = request.app.state.service.lifecycle
    assert life is not None  # the router is only mounted with a catalogue
    return life


async def run(function: Any, *args: Any) -> Any:
    """A catalogue call in a worker thread; its one-line errors become 404/409 answers."""
    try:
        return await asyncio.to_thread(function, *args)
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except PadimError as exc:
        raise ApiError(409, "conflict", str(exc)) from None


class Promotion(BaseModel):
    version: int | str = Field(description="a version number, or an alias to copy")
    alias: str = options.ALIAS.default
    override: str | None = Field(None, description="why a version whose gate failed goes")


class Retrain(BaseModel):
    base: str = Field(options.ALIAS.default, description="the version or alias to update")
    alias: str = "candidate"


class Rollback(BaseModel):
    alias: str = options.ALIAS.default


class NewToken(BaseModel):
    name: str
    role: str = Field(description=f"one of {', '.join(ROLES)}")


# ----------------------------------------------------------------------------- the studio


@router.get("/studio", include_in_schema=False)
async def studio() -> FileResponse:
    """The studio page: versions, the line's review queue, the audit trail (static: its data
    comes from the routes below, with the reader's token)."""
    return FileResponse(web_root() / "studio.html", headers=PAGE_HEADERS)


# ----------------------------------------------------------------------------- the registry


@router.get("/v1/products", summary="The registry's products and their aliases")
async def products(request: Request) -> dict:
    require(request, READ)
    life = life_of(request)
    names = await run(life.registry.products)
    found = [{"product": p, "aliases": await run(life.registry.aliases, p)} for p in names]
    return {"products": found, "served_alias": life.alias}


@router.get("/v1/products/{product}/versions", summary="A product's versions and lineage")
async def versions(request: Request, product: str) -> dict:
    require(request, READ)
    life = life_of(request)
    found = await run(life.registry.versions, product)
    aliases = await run(life.registry.aliases, product)
    return {"product": product, "aliases": aliases, "versions": [v.to_dict() for v in found]}


@router.post("/v1/products/{product}/promote", summary="Point an alias at a version")
async def promote(request: Request, product: str, body: Promotion) -> dict:
    who = require(request, "engineer")
    life = life_of(request)
    number = await run(
        life.registry.promote, product, body.version, actor(who), body.alias, body.override
    )
    return await moved(request, product, body.alias, number)


@router.post("/v1/products/{product}/retrain", summary="A candidate from the false alarms")
async def retrain(request: Request, product: str, body: Retrain) -> dict:
    """Exact update of `base` with the false alarms operators marked, both evaluated on every
    labelled image, the gate stated; the candidate goes to `alias` (minutes on a CPU)."""
    who = require(request, "engineer")
    job = Retraining(life_of(request).catalogue, product, body.base, body.alias)
    version, report = await run(job.run, actor(who))
    return {"product": product, "version": version.number, "alias": body.alias, **report}


@router.post("/v1/products/{product}/rollback", summary="Point an alias back where it was")
async def rollback(request: Request, product: str, body: Rollback) -> dict:
    who = require(request, "engineer")
    life = life_of(request)
    number = await run(life.registry.rollback, product, actor(who), body.alias)
    return await moved(request, product, body.alias, number)


async def moved(request: Request, product: str, alias: str, number: int) -> dict:
    """After an alias moved: this process swaps before it answers (other worker processes and
    line computers at their next check, --reload-interval)."""
    service = request.app.state.service
    life = life_of(request)
    if alias == life.alias and product in life.served():
        await service.pool.follow()
    return {"product": product, "alias": alias, "version": number}


@router.get("/v1/events", summary="The audit trail")
async def events(request: Request, product: str | None = None, limit: int = 1000) -> dict:
    require(request, READ)
    life = life_of(request)
    found = await run(read_events, life.catalogue.engine, product, min(max(limit, 1), 100_000))
    return {"events": [{**e, "at": e["at"].isoformat()} for e in found]}


# ----------------------------------------------------------------------------- records


@router.get("/v1/records", summary="Inspection records (newest first): JSON, CSV or Parquet")
async def records(
    request: Request,
    product: str | None = None,
    version: int | None = None,
    verdict: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 1000,
    offset: int = 0,
    format: str = "json",
) -> Any:
    require(request, READ)
    if not 1 <= limit <= MAX_RECORDS or offset < 0:
        raise ApiError(422, "bad_query", f"limit must be 1 to {MAX_RECORDS}, offset 0 or more")
    if format not in ("json", "csv", "parquet"):
        raise ApiError(422, "bad_query", "format: json, csv or parquet")
    try:
        start = parse_time(since, "since", naive_is_local=False)
        end = parse_time(until, "until", naive_is_local=False)
    except PadimError as exc:
        raise ApiError(422, "bad_query", str(exc)) from None
    q = Query(product, version, verdict, start, end, limit, offset)
    found = await run(life_of(request).book.query, q)
    if format == "csv":
        return Response(csv_text(found), media_type="text/csv")
    if format == "parquet":
        buffer = io.BytesIO()
        await run(write_parquet, buffer, found)
        return Response(buffer.getvalue(), media_type="application/vnd.apache.parquet")
    for row in found:
        row["at"] = row["at"].isoformat()
    return {"count": len(found), "offset": offset, "records": found}


@router.get("/v1/records/{record_id}/image", summary="The image kept with a record")
async def record_image(request: Request, record_id: int) -> FileResponse:
    require(request, READ)
    path = await run(life_of(request).book.image_path, record_id)
    if path is None or not path.is_file():
        raise ApiError(404, "not_found", f"record {record_id} has no kept image")
    return FileResponse(path)


# ----------------------------------------------------------------------------- feedback


async def small_file(request: Request, upload: UploadFile | None, what: str) -> bytes | None:
    if upload is None:
        return None
    limit = request.app.state.service.settings.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"the {what} is larger than {limit} bytes")
    return data


@router.post("/v1/records/{record_id}/feedback", summary="Label a record (operator feedback)")
async def give_feedback(
    request: Request,
    record_id: int,
    label: Annotated[str, Form(description=f"one of {', '.join(FEEDBACK_LABELS)}")],
    note: Annotated[str, Form()] = "",
    image: Annotated[UploadFile | None, File(description="the image, if not kept")] = None,
    mask: Annotated[UploadFile | None, File(description="a defect mask (non-zero)")] = None,
) -> dict:
    """false_alarm (the part was good), defect (confirmed) or missed_defect (judged good, was
    not); the record's image is pinned for retraining and the gate. Multipart form fields."""
    who = require(request, "operator")
    data = await small_file(request, image, "image")
    mask_data = await small_file(request, mask, "mask")
    suffix = Path(image.filename or "").suffix.lower() if image is not None else ".png"
    book = FeedbackBook(life_of(request).catalogue)
    return await run(
        book.give, record_id, label, actor(who), note, data, mask_data, suffix or ".png"
    )


@router.get("/v1/feedback", summary="The labels operators gave (newest first)")
async def list_feedback(request: Request, product: str | None = None, limit: int = 1000) -> dict:
    require(request, READ)
    book = FeedbackBook(life_of(request).catalogue)
    return {"feedback": await run(book.listing, product, min(max(limit, 1), 100_000))}


# ----------------------------------------------------------------------------- tokens


@router.get("/v1/tokens", summary="The API tokens (names and roles, never the tokens)")
async def list_tokens(request: Request) -> dict:
    require(request, "admin")
    return {"tokens": await run(life_of(request).tokens.listing)}


@router.post("/v1/tokens", summary="Make a token (shown once)")
async def make_token(request: Request, body: NewToken) -> dict:
    who = require(request, "admin")
    token = await run(life_of(request).tokens.create, body.name, body.role, actor(who))
    return {"name": body.name, "role": body.role, "token": token}


@router.delete("/v1/tokens/{name}", summary="Revoke a token")
async def revoke_token(request: Request, name: str) -> dict:
    who = require(request, "admin")
    await run(life_of(request).tokens.revoke, name, actor(who))
    return {"name": name, "revoked": True}
