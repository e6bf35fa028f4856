"""Reading requests: image uploads (multipart or raw bytes) under size limits, and query
parameters; every client mistake is an `ApiError` with a status and a short code."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from padim.data.pictures import PICTURE_KINDS
from padim.service.settings import MB, ServeSettings

INCLUDES = (*PICTURE_KINDS, "map")
RAW_TYPES = ("application/octet-stream",)


class ApiError(Exception):
    """A client mistake: becomes a JSON error with this status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Upload:
    name: str
    data: bytes


async def read_body(
    request: Request, limit: int, what: str, timeout: float = 30.0, deadline: float = 120.0
) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes, with 408 when the
    client pauses longer than `timeout` seconds or the whole body takes longer than `deadline`
    (a byte every few seconds would hold a connection forever), and with 499 (logged, not a
    server error) when the client goes away mid-upload."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(what, int(declared), limit)
    chunks: list[bytes] = []
    total = 0
    stream = request.stream().__aiter__()
    ends = time.monotonic() + deadline
    while True:
        left = ends - time.monotonic()
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, min(timeout, left)))
        except StopAsyncIteration:
            break
        except TimeoutError:
            late = time.monotonic() >= ends
            raise ApiError(
                408,
                "body_timeout",
                f"the body took longer than {deadline:g} s"
                if late
                else f"the client sent no data for {timeout:g} s while sending the body",
            ) from None
        except ClientDisconnect:
            raise ApiError(
                499, "client_disconnected", "the client went away during the upload"
            ) from None
        total += len(chunk)
        if total > limit:
            raise too_large(what, total, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(what: str, size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"{what} is larger than the limit of {limit / MB:g} MB ({size / MB:.1f} MB or more)",
    )


def _replay(request: Request, body: bytes) -> Request:
    """A copy of `request` whose body is `body` (already read under a size limit)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


async def read_uploads(request: Request, settings: ServeSettings, batch: bool) -> list[Upload]:
    """Images of a request: multipart files (any field; `file` by convention) or a raw body
    with an image/* or application/octet-stream content type."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        limit = settings.max_request_bytes if batch else settings.max_upload_bytes + MB
        body = await read_body(
            request, limit, "the request", settings.body_timeout_s, settings.body_deadline_s
        )
        max_files = settings.max_batch_images if batch else 1
        try:
            form = await _replay(request, body).form(max_files=max_files, max_fields=max_files + 8)
        except StarletteHTTPException as exc:  # malformed multipart, too many parts
            hint = "" if batch else " (several images: use /v1/predict/batch)"
            raise ApiError(400, "bad_multipart", f"{exc.detail}{hint}") from None
        try:
            uploads = [
                Upload(v.filename or k, await v.read())
                for k, v in form.multi_items()
                if isinstance(v, UploadFile)
            ]
        finally:
            await form.close()
        if not uploads:
            raise ApiError(
                400,
                "no_file",
                "no image in the form: send it in the field 'file' (multipart/form-data)",
            )
        return uploads
    if media.startswith("image/") or media in RAW_TYPES:
        name = query(request, "filename") or "body"
        return [
            Upload(
                name,
                await read_body(
                    request,
                    settings.max_upload_bytes,
                    "the image",
                    settings.body_timeout_s,
                    settings.body_deadline_s,
                ),
            )
        ]
    shown = media or "none"
    raise ApiError(
        415,
        "unsupported_media_type",
        f"content type {shown} is not accepted: send multipart/form-data with the "
        "image in the field 'file', or the raw image bytes as image/* or "
        "application/octet-stream",
    )


QUERY_PARAMETERS = ("include", "threshold", "operating_point", "min_area", "filename")


def query(request: Request, name: str) -> str | None:
    """A query parameter given at most once (a repeated one is ambiguous: 422, whatever the
    order), and no unknown ones."""
    unknown = sorted(set(request.query_params) - set(QUERY_PARAMETERS))
    if unknown:
        raise ApiError(
            422,
            "bad_query",
            f"unknown query parameter {unknown[0]!r}: use {', '.join(QUERY_PARAMETERS)}",
        )
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ApiError(422, "bad_query", f"query parameter {name!r} given {len(values)} times")
    return values[0] if values else None


def parse_include(text: str) -> set[str]:
    wanted = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = wanted - set(INCLUDES)
    if unknown:
        raise ApiError(
            422,
            "bad_include",
            f"unknown include {', '.join(sorted(unknown))}: choose from {', '.join(INCLUDES)}",
        )
    return wanted


def parse_min_area(text: str | None) -> int:
    if text is None or text == "":
        return 0
    if not text.isdigit() or len(text) > 12:
        raise ApiError(
            422, "bad_min_area", f"min_area must be a whole number of pixels, got {text!r}"
        )
    return int(text)


def parse_threshold(text: str | None, default: float) -> float:
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ApiError(
            422, "bad_threshold", f"threshold must be a finite, non-negative number, got {text!r}"
        )
    return value
