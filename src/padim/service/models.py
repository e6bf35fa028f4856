"""The served models: a folder (or a list) of model files, loaded on first use, at most
`max_loaded` in memory (least recently used unloaded first), and swapped without a failed
request when a file is replaced on disk.

Each loaded model has its own scorer and micro-batcher. A request holds its model while it is
scored; a model being unloaded or replaced stops only when its last request is done, so a swap
never fails a request. Loads run one at a time in a worker thread (the event loop keeps
serving), and a file that does not load is reported (503 and in /v1/models) while the previous
version, if any, goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from padim.deploy.scorers import Scorer
from padim.errors import PadimError, first_line
from padim.lifecycle.drift import DriftMonitor, Reference
from padim.memory import release_free_memory
from padim.service.batching import MicroBatcher
from padim.service.metrics import ServiceMetrics
from padim.service.requests import ApiError
from padim.service.settings import ServeSettings

LOG = logging.getLogger("padim.service")
MODEL_SUFFIXES = (".safetensors", ".onnx", ".xml")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # safe in URLs and metric labels

Signature = tuple[int, int, int]  # (inode, size, mtime in ns) of a model file (and its .bin)
Loader = Callable[[Path], Scorer]


def signature(path: Path) -> Signature | None:
    """What changes when a file is replaced or rewritten; None when it is gone."""
    try:
        parts = [os.stat(path)]
        if path.suffix.lower() == ".xml":  # OpenVINO: the weights are beside the graph
            parts.append(os.stat(path.with_suffix(".bin")))
    except OSError:
        return None
    return (
        sum(p.st_ino for p in parts),
        sum(p.st_size for p in parts),
        max(p.st_mtime_ns for p in parts),
    )


def model_files(folder: Path) -> list[Path]:
    """The model files directly in a folder (hidden and temporary files skipped, and links
    that lead outside it: the folder is what the operator chose to serve)."""
    try:
        entries = sorted(folder.iterdir())
        inside = folder.resolve()
    except OSError as exc:
        raise PadimError(f"cannot list the models folder {folder}: {exc.strerror}") from None
    return [
        p
        for p in entries
        if p.suffix.lower() in MODEL_SUFFIXES
        and not p.name.startswith(".")
        and p.is_file()
        and (not p.is_symlink() or p.resolve().parent == inside)
    ]


SHOWN_NAMES = 20  # model names listed in an error message; the rest are counted


def name_list(names: Sequence[str]) -> str:
    """Names for a message: the first SHOWN_NAMES, then how many more (a folder of 2,000
    models must not make every 404 a 24 kB answer)."""
    shown = ", ".join(names[:SHOWN_NAMES]) or "none"
    more = len(names) - SHOWN_NAMES
    return f"{shown} and {more} more (GET /v1/models)" if more > 0 else shown


def name_files(sources: Sequence[Path], warned: set[str] | None = None) -> dict[str, Path]:
    """Model name (the file's stem) -> file, from one folder or several files. Names must be
    unique and URL-safe; files of a folder with an unusable name are skipped with one log line
    each (once per file while `warned` is kept across scans)."""
    folder = len(sources) == 1 and sources[0].is_dir()
    files = model_files(sources[0]) if folder else list(sources)
    warned = set() if warned is None else warned
    found: dict[str, Path] = {}
    for path in files:
        name = path.stem
        if not NAME.match(name) or name in found:
            why = "is used by " + found[name].name if name in found else "is not URL-safe"
            if not folder:
                raise PadimError(f"model name {name!r} of {path} {why}: rename the file")
            if path.name not in warned:
                warned.add(path.name)
                LOG.warning("skipping %s: its name %r %s", path.name, name[:80], why)
            continue
        found[name] = path
    return found


@dataclass(frozen=True)
class ModelSources:
    """Where a service's models come from: one folder or several files, or `resolve` (name
    -> file, asked again at every check: a registry's alias), and how to load one;
    `version_of` names the registry version of a file (None: not a registered one)."""

    paths: Sequence[Path]
    load: Loader
    ready: dict[str, tuple[Scorer, Signature | None]] = field(default_factory=dict)  # loaded
    warned: set[str] = field(default_factory=set)  # unusable file names already logged
    resolve: Callable[[], dict[str, Path]] | None = None
    version_of: Callable[[str, Path], int | None] | None = None


@dataclass
class Loaded:
    """One model in memory: its scorer and batcher, and the requests now using it."""

    name: str
    scorer: Scorer
    batcher: MicroBatcher
    signature: Signature | None
    version: int | None = None  # the registry version being served
    drift: DriftMonitor | None = None  # the line against this model's calibration
    loaded_at: float = field(default_factory=time.time)
    active: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class ModelPool:
    """Named models, loaded lazily, LRU-bounded, hot-reloaded (see the module's docstring)."""

    def __init__(
        self,
        sources: ModelSources,
        settings: ServeSettings,
        metrics: ServiceMetrics,
        fixed: dict[str, Scorer] | None = None,
    ) -> None:
        self.sources = list(sources.paths)
        self.load = sources.load
        self.resolve = sources.resolve
        self.version_of = sources.version_of
        self._ready = dict(sources.ready)  # installed at start, then forgotten
        self.settings = settings
        self.metrics = metrics
        self.fixed = dict(fixed or {})  # in memory, no file: never unloaded
        self.files: dict[str, Path] = {}
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()
        self.failures: dict[str, tuple[Signature | None, str]] = {}  # name -> (file, why)
        self.reloads: dict[str, int] = {}
        self._loading: dict[str, asyncio.Task[Loaded]] = {}
        self._load_lock: asyncio.Lock | None = None
        self._background: set[asyncio.Task] = set()
        self._watcher: asyncio.Task | None = None
        self._warned = sources.warned  # unusable file names already logged

    @classmethod
    def of_scorer(
        cls, scorer: Scorer, settings: ServeSettings, metrics: ServiceMetrics, name: str = ""
    ) -> ModelPool:
        """One model already in memory (no file to watch): the single-model service."""
        name = name or _safe_name(scorer.model_id)
        return cls(ModelSources([], _no_loader), settings, metrics, fixed={name: scorer})

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._load_lock = asyncio.Lock()
        self.rescan()
        for name, scorer in self.fixed.items():
            await self._install(name, scorer, None)
        ready, self._ready = self._ready, {}
        for name, (scorer, sig) in ready.items():
            await self._install(name, scorer, sig)
        if (self.sources or self.resolve) and self.settings.reload_s > 0:
            self._watcher = asyncio.create_task(self._watch(), name="padim-model-watch")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in [*self._loading.values(), *self._background]:
            task.cancel()
        for entry in list(self.loaded.values()):
            await entry.batcher.stop()
        self.loaded.clear()

    # ------------------------------------------------------------------ what is served

    @property
    def names(self) -> list[str]:
        return sorted(set(self.files) | set(self.fixed))

    def rescan(self) -> None:
        """Re-read the folder (or the registry): new files become servable, removed ones are
        unloaded."""
        if not self.sources and self.resolve is None:
            return
        try:
            self.files = self.resolve() if self.resolve else name_files(self.sources, self._warned)
        except PadimError as exc:  # the folder went away: serve what is loaded, say why
            LOG.error("%s", exc)
            return
        for name in [n for n in self.loaded if n not in self.files and n not in self.fixed]:
            LOG.info("model %s: its file is gone, unloading it", name)
            self._unload(name)

    def check(self, name: str) -> str:
        """`name` when it is served (a file added since the last check included), else a 404:
        asked before a request's body is read, so a wrong name costs no upload."""
        if name not in self.files and name not in self.fixed and self._may_exist(name):
            self.rescan()  # a file added since the last scan: served at once
        if name not in self.files and name not in self.fixed:
            raise ApiError(
                404, "unknown_model", f"no model {name[:80]!r} (served: {name_list(self.names)})"
            )
        return name

    def _may_exist(self, name: str) -> bool:
        """Whether a model file of that name is in the folder now: a few `stat` calls, so an
        unknown name costs no scan of a folder of thousands of files."""
        if self.resolve is not None:  # a product promoted since the last check
            return bool(NAME.match(name))
        folder = self.sources[0] if len(self.sources) == 1 else None
        if folder is None or not folder.is_dir() or not NAME.match(name):
            return False
        return any((folder / f"{name}{suffix}").is_file() for suffix in MODEL_SUFFIXES)

    def only(self) -> str:
        """The model name for the single-model routes: there must be exactly one."""
        names = self.names
        if len(names) == 1:
            return names[0]
        raise ApiError(
            409,
            "several_models",
            f"this service serves {len(names)} models ({name_list(names)}): "
            "use /v1/models/{name}/predict",
        )

    def listing(self) -> list[dict[str, Any]]:
        """One entry per servable model, for GET /v1/models."""
        out = []
        for name in self.names:
            entry = self.loaded.get(name)
            path = self.files.get(name)
            failure = self.failures.get(name)
            item: dict[str, Any] = {
                "name": name,
                "file": path.name if path else None,
                "loaded": entry is not None,
                "model_id": entry.scorer.model_id if entry else None,
                "version": entry.version if entry else None,
                "threshold": entry.scorer.threshold if entry else None,
                "loaded_at": round(entry.loaded_at, 3) if entry else None,
                "in_flight": entry.active if entry else 0,
                "reloads": self.reloads.get(name, 0),
                "error": failure[1] if failure else None,
            }
            out.append(item)
        return out

    # ------------------------------------------------------------------ using a model

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[Loaded]:
        """Hold model `name` (loading it if need be) for the length of one request."""
        entry = await self._acquire(name)
        try:
            yield entry
        finally:
            entry.active -= 1
            if entry.active == 0:
                entry.idle.set()

    async def _acquire(self, name: str) -> Loaded:
        while True:
            entry = self.loaded.get(name)
            if entry is not None:  # no await between finding and holding it
                entry.active += 1
                entry.idle.clear()
                self.loaded.move_to_end(name)
                return entry
            await self._load_named(name)

    async def _load_named(self, name: str) -> Loaded:
        path = self.files.get(self.check(name))
        if path is None:  # an in-memory model is never unloaded: it cannot be missing
            raise ApiError(503, "model_unavailable", f"model {name} is not in memory")
        task = self._loading.get(name)
        if task is None:
            failure = self.failures.get(name)
            if failure is not None and failure[0] == signature(path):
                raise ApiError(503, "model_unavailable", failure[1])
            task = self._start_load(name, path)
        return await asyncio.shield(task)

    def _start_load(self, name: str, path: Path) -> asyncio.Task[Loaded]:
        task = asyncio.create_task(self._load_file(name, path), name=f"padim-load-{name}")
        self._loading[name] = task

        def done(_: asyncio.Task) -> None:
            if self._loading.get(name) is task:
                del self._loading[name]

        task.add_done_callback(done)
        return task

    async def _load_file(self, name: str, path: Path) -> Loaded:
        """Load (or reload) `name` from `path` in a worker thread and install it."""
        assert self._load_lock is not None
        async with self._load_lock:  # one load at a time: bounded memory
            sig = signature(path)
            try:
                scorer = await asyncio.to_thread(self.load, path)
            except Exception as exc:
                message = f"model {name} ({path.name}) cannot be loaded: {first_line(exc)}"
                LOG.error("%s", message)  # the log may name server paths; clients may not
                message = without_folders(message, path)
                self.failures[name] = (sig, message)
                self.metrics.loads.labels(model=name, outcome="failed").inc()
                if name in self.loaded:  # a bad replacement: the old version goes on serving
                    return self.loaded[name]
                raise ApiError(503, "model_unavailable", message) from None
            self.failures.pop(name, None)
            self.metrics.loads.labels(model=name, outcome="loaded").inc()
            version = self.version_of(name, path) if self.version_of else None
            return await self._install(name, scorer, sig, version)

    async def _install(
        self, name: str, scorer: Scorer, sig: Signature | None, version: int | None = None
    ) -> Loaded:
        settings = self.settings
        batcher = MicroBatcher(
            scorer.score_batch,
            settings.max_batch if settings.batching else 1,
            settings.max_wait_ms if settings.batching else 0.0,
            self.metrics.observer(name),
        )
        await batcher.start()
        description = scorer.describe()
        reference = Reference.of_info({"good_score_summary": description.get("good_score_summary")})
        monitor = None if reference is None else DriftMonitor(reference, settings.drift_window)
        entry = Loaded(name, scorer, batcher, sig, version, monitor)
        old = self.loaded.get(name)
        self.loaded[name] = entry  # requests from now on get the new one
        self.loaded.move_to_end(name)
        self.metrics.model_in(name, description, lambda: batcher.pending)
        if old is not None:
            self.reloads[name] = self.reloads.get(name, 0) + 1
            LOG.info("model %s: now serving %s", name, scorer.model_id + _version_text(version))
            self._retire(old)
        while len(self.loaded) > max(1, settings.max_loaded):
            oldest = next((n for n in self.loaded if n not in self.fixed and n != name), None)
            if oldest is None:
                break
            LOG.info("model %s: unloaded (least recently used)", oldest)
            self._unload(oldest)
        return entry

    def _unload(self, name: str) -> None:
        entry = self.loaded.pop(name, None)
        if entry is not None:
            self.metrics.model_out(name)
            self._retire(entry)

    def _retire(self, entry: Loaded) -> None:
        """Stop a replaced or unloaded model once its last request is done."""

        async def retire() -> None:
            while entry.active:
                await entry.idle.wait()
            await entry.batcher.stop()
            # a model is held in reference cycles (torch modules, bound methods): without a
            # collection it waits for the garbage collector, and an LRU of one model grew to
            # 3.7 GB alternating two 130 MB ones; then give the freed heap back to the system
            await asyncio.to_thread(free_model_memory)

        task = asyncio.create_task(retire())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ hot reload

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_s)
            try:
                self.check_files()
            except Exception as exc:  # the watcher must outlive any one bad check
                LOG.error("checking the model files failed: %s", exc)

    async def follow(self) -> None:
        """Check the sources now and wait for the swaps that starts (a promotion answered by
        this process is served by it when the answer goes out)."""
        self.check_files()
        pending = [asyncio.shield(t) for t in self._loading.values()]
        await asyncio.gather(*pending, return_exceptions=True)

    def check_files(self) -> None:
        """Rescan, and reload each loaded model whose file was replaced."""
        self.rescan()
        for name, entry in list(self.loaded.items()):
            path = self.files.get(name)
            if path is None or name in self._loading:
                continue
            sig = signature(path)
            failure = self.failures.get(name)
            if sig is None or sig == entry.signature or (failure and failure[0] == sig):
                continue
            LOG.info("model %s: %s changed on disk, reloading", name, path.name)
            self._start_load(name, path).add_done_callback(_consume)


def without_folders(message: str, path: Path) -> str:
    """`message` with the folders of `path` taken out (file names stay)."""
    for folder in {str(path.resolve().parent), str(path.parent.absolute()), str(path.parent)}:
        if folder not in ("", "."):
            message = message.replace(folder + os.sep, "")
    return message


def free_model_memory() -> None:
    """Collect unreachable objects (a retired model's cycles) and return freed heap memory."""
    gc.collect()
    release_free_memory()


def _consume(task: asyncio.Task) -> None:
    """A background reload's failure is logged where it happens; nothing waits for it."""
    if not task.cancelled():
        task.exception()


def _version_text(version: int | None) -> str:
    return "" if version is None else f" (version {version})"


def _safe_name(model_id: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", model_id).strip("-._") or "model"
    return cleaned[:128]


def _no_loader(path: Path) -> Scorer:
    raise PadimError(f"this service has no model files to load ({path})")
