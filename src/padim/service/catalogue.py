"""What a service does with a catalogue: serve a registry alias's versions (swapped when the
alias moves), record every verdict, and know who holds a token. One `Lifecycle` per service
process; each worker process opens its own."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from padim.data.images import IMAGE_EXTENSIONS
from padim.errors import PadimError
from padim.files import file_sha256
from padim.lifecycle.audit import audit
from padim.lifecycle.database import Catalogue, open_catalogue
from padim.lifecycle.records import Entry, RecordBook, Retention
from padim.lifecycle.registry import Registry
from padim.lifecycle.tokens import Identity, TokenStore, token_hash
from padim.service.models import Loader, ModelSources
from padim.service.requests import Upload
from padim.service.settings import MB, ServeSettings

LOG = logging.getLogger("padim.service")
TOKEN_CACHE_S = 5.0  # a token is looked up at most this often (a revocation takes this long)


@dataclass
class Lifecycle:
    """A service's catalogue: its registry, record book and tokens, and what it serves."""

    catalogue: Catalogue
    alias: str
    products: Sequence[str]  # served from the registry (empty: the model files given)
    record: bool
    auth: bool
    open_reads: bool
    retention: Retention = field(default_factory=Retention)
    every_product: bool = False  # serve every product's alias (the studio), not `products`
    registry: Registry = field(init=False)
    book: RecordBook = field(init=False)
    tokens: TokenStore = field(init=False)
    commits: GroupCommit = field(init=False)
    _seen: dict[str, tuple[float, Identity | None]] = field(default_factory=dict, init=False)
    _versions: dict[str, int] = field(default_factory=dict, init=False)  # path -> number

    def __post_init__(self) -> None:
        self.registry = Registry(self.catalogue)
        self.book = RecordBook(self.catalogue, self.retention)
        self.commits = GroupCommit(self.book)
        self.tokens = TokenStore(self.catalogue)

    @classmethod
    def of(cls, settings: ServeSettings) -> Lifecycle | None:
        """The lifecycle `settings` ask for (None: a service without a catalogue)."""
        if settings.catalogue is None:
            return None
        catalogue = open_catalogue(settings.catalogue, settings.files)
        return cls(
            catalogue,
            settings.alias,
            tuple(settings.products),
            settings.record,
            settings.auth,
            settings.open_reads,
            Retention(settings.keep_good, int(settings.image_budget_mb * MB)),
            settings.studio and not settings.products,
        )

    # ------------------------------------------------------------------ serving an alias

    def sources(self, load: Loader) -> ModelSources:
        """The registry's `alias` versions of the products as the service's models."""
        missing = [p for p in self.served() if self.alias not in self.registry.aliases(p)]
        missing = [] if self.every_product else missing
        if missing:
            raise PadimError(
                f"no {self.alias} version of {', '.join(missing)} in the registry: register "
                f"one and promote it ('padim registry promote PRODUCT VERSION')"
            )
        return ModelSources([], load, resolve=self.resolve, version_of=self.version_of)

    def resolve(self) -> dict[str, Path]:
        """Product -> the file of the version its alias points at now."""
        found: dict[str, Path] = {}
        try:
            for product in self.served():
                number = self.registry.aliases(product).get(self.alias)
                if number is not None:
                    version = self.registry.version(product, number)
                    found[product] = version.path
                    self._versions[str(version.path)] = number
        except SQLAlchemyError as exc:
            raise PadimError(f"the catalogue cannot be read: {str(exc).splitlines()[0]}") from None
        return found

    def served(self) -> list[str]:
        """The products served: those named, or every product in the registry."""
        return self.registry.products() if self.every_product else list(self.products)

    def version_of(self, product: str, path: Path) -> int | None:
        if str(path) in self._versions:
            return self._versions[str(path)]
        return self.registry.number_of(product, file_sha256(path))

    # ------------------------------------------------------------------ tokens

    def identify(self, token: str) -> Identity | None:
        """The holder of `token` (looked up at most every TOKEN_CACHE_S seconds)."""
        now = time.monotonic()
        key = token_hash(token)
        cached = self._seen.get(key)
        if cached is not None and now - cached[0] < TOKEN_CACHE_S:
            return cached[1]
        identity = self.tokens.identify(token)
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen[key] = (now, identity)
        return identity

    def note_drift(self, event: dict[str, Any]) -> None:
        """A drift alarm (or its end) in the audit trail; a catalogue that cannot take it is
        logged, never raised (the alarm has gone to the log, metrics and webhook already)."""
        try:
            with self.catalogue.engine.begin() as conn:
                audit(conn, "service", event["event"], event["model"], event)
        except Exception as exc:
            LOG.error("the drift event could not be written to the catalogue: %s", exc)

    # ------------------------------------------------------------------ records

    def entries(
        self, model_name: str, version: int | None, results: list[dict], uploads: list[Upload]
    ) -> list[tuple[int, Entry]]:
        """(result index, record) for every scored result of a request."""
        out = []
        for i, (result, upload) in enumerate(zip(results, uploads, strict=True)):
            if "error" in result:
                continue
            suffix = Path(upload.name).suffix.lower()
            out.append(
                (
                    i,
                    Entry(
                        product=model_name,
                        version=version,
                        model_id=result["model_id"],
                        source="service",
                        name=upload.name,
                        score=result["score"],
                        normalised_score=result["normalised_score"],
                        threshold=result["threshold"],
                        verdict=result["verdict"],
                        regions=result.get("regions", []),
                        image_sha256=hashlib.sha256(upload.data).hexdigest(),
                        image=upload.data,
                        suffix=suffix if suffix in IMAGE_EXTENSIONS else ".img",
                    ),
                )
            )
        return out

    async def record_results(
        self, model_name: str, version: int | None, results: list[dict], uploads: list[Upload]
    ) -> None:
        """Record a request's verdicts (committed when this returns) and put each record's id
        in its result."""
        indexed = await asyncio.to_thread(self.entries, model_name, version, results, uploads)
        ids = await self.commits.write([e for _, e in indexed])
        for (i, _), record_id in zip(indexed, ids, strict=True):
            results[i]["record_id"] = record_id


class GroupCommit:
    """The records of concurrent requests committed together: while one transaction runs,
    the requests that arrive queue up and go in the next one, so a busy service makes a
    commit per group rather than per image. Each request is still answered only once its
    records are committed."""

    def __init__(self, book: RecordBook) -> None:
        self.book = book
        self.pending: list[tuple[list[Entry], asyncio.Future[list[int]]]] = []
        self.flushing = False

    async def write(self, entries: list[Entry]) -> list[int]:
        if not entries:
            return []
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self.pending.append((entries, future))
        if not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().create_task(self.flush())
        return await future

    async def flush(self) -> None:
        try:
            while self.pending:
                group, self.pending = self.pending, []
                try:
                    ids = await asyncio.to_thread(
                        self.book.write, [e for entries, _ in group for e in entries]
                    )
                except Exception as exc:  # every request of the group fails with it
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for entries, future in group:
                    if not future.done():
                        future.set_result(ids[start : start + len(entries)])
                    start += len(entries)
        finally:
            self.flushing = False
