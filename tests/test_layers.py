"""The architecture, enforced: which sub-package may import which, which modules stay torch-free,
no private names used across modules, and one source for the option choices."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "padim"

FOUNDATION = {
    "errors",
    "options",
    "files",
    "memory",
    "progress",
    "extras",
    "normalise",
    "curves",
}
# layer -> the padim layers it may import (foundation modules are always allowed)
ALLOWED = {
    "foundation": set(),
    "core": set(),
    "data": set(),
    "model": {"core", "data"},
    "evaluation": {"core", "data", "model"},
    "deploy": {"core", "data", "model"},
    "lifecycle": {"data", "model"},
    "service": {"data", "deploy", "lifecycle"},
    "ray_engine": {"core", "data", "model", "deploy"},
    "cli": {"core", "data", "model", "evaluation", "deploy", "service", "ray_engine", "lifecycle"},
    "package": {"model"},  # padim/__init__.py: the public API
}
# Modules that must not import torch (or torchvision, timm) at import time.
TORCH_FREE = {
    "padim",
    "padim.errors",
    "padim.options",
    "padim.files",
    "padim.memory",
    "padim.progress",
    "padim.extras",
    "padim.normalise",
    "padim.curves",
    "padim.data.images",
    "padim.data.regions",
    "padim.data.preprocess",
    "padim.data.datasets",
    "padim.data.sources",
    "padim.data.pictures",
    "padim.data.demo_set",
    "padim.data.download",
    "padim.data.video",
    "padim.deploy.scorers",
    "padim.deploy.exported",
    "padim.deploy.model_info",
    "padim.deploy.onnx_weights",
    "padim.model.gaussian_file",
    "padim.deploy.watch",
    "padim.deploy.export",
    "padim.deploy.metadata",
    "padim.deploy.predict",
    "padim.deploy.bulk",
    "padim.model.calibration",
    "padim.model.thresholds",
    "padim.data.decision",
    "padim.data.align",
    "padim.data.aligned",
    "padim.data.fourier_mellin",
    "padim.model.config",
    "padim.model.modelfile",
    "padim.model.fit_many",
    "padim.service.app",
    "padim.service.routes",
    "padim.service.inspection",
    "padim.service.requests",
    "padim.service.batching",
    "padim.service.metrics",
    "padim.service.models",
    "padim.service.examples",
    "padim.service.settings",
    "padim.service.server",
    "padim.service.catalogue",
    "padim.service.catalogue_routes",
    "padim.service.access",
    "padim.lifecycle",
    "padim.lifecycle.schema",
    "padim.lifecycle.database",
    "padim.lifecycle.audit",
    "padim.lifecycle.registry",
    "padim.lifecycle.records",
    "padim.lifecycle.tokens",
    "padim.lifecycle.feedback",
    "padim.lifecycle.retrain",
    "padim.cli.retrain",
    "padim.cli.drift",
    "padim.lifecycle.drift",
    "padim.cli.catalogue_args",
    "padim.cli.registry",
    "padim.cli.records",
    "padim.cli.tokens",
    "padim.cli",
    "padim.cli.arguments",
    "padim.cli.backbones",
    "padim.cli.benchmark",
    "padim.cli.calibrate",
    "padim.cli.common",
    "padim.cli.demo",
    "padim.cli.download",
    "padim.cli.evaluate",
    "padim.cli.export",
    "padim.cli.fit",
    "padim.cli.fit_many",
    "padim.cli.info",
    "padim.cli.parser",
    "padim.cli.predict",
    "padim.cli.serve",
    "padim.cli.update",
    "padim.cli.watch",
}
HEAVY = {"torch", "torchvision", "timm"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in FOUNDATION or parts[1] == "__main__":
        return "foundation" if parts[1] in FOUNDATION else "cli"
    return parts[1]


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(module, names) of each import; `top_level_only`: not inside functions, and not under
    `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
    return found


def padim_targets(module: str, names: list[str]) -> list[str]:
    """The padim modules an import reaches (`from padim import options` names a module)."""
    if module == "padim":
        return [f"padim.{n}" for n in names if n not in ("__version__",)]
    return [module] if module.startswith("padim.") or module == "padim" else []


def test_every_module_is_in_a_known_layer():
    unknown = {m for m in modules() if layer(m) not in ALLOWED}
    assert not unknown, f"modules outside the layer map: {unknown}"


def test_imports_follow_the_layers():
    wrong = []
    for module, path in modules().items():
        own = layer(module)
        for target, names in imports(path):
            for dest in padim_targets(target, names):
                other = layer(dest)
                if other in ("foundation", own) or (other == "package" and own == "cli"):
                    continue
                if other not in ALLOWED[own]:
                    wrong.append(f"{module} ({own}) imports {dest} ({other})")
    assert not wrong, "\n".join(wrong)


def test_foundation_and_core_import_nothing_above_them():
    for module, path in modules().items():
        if layer(module) in ("foundation", "core", "data"):
            for target, names in imports(path):
                for dest in padim_targets(target, names):
                    assert layer(dest) in ("foundation", layer(module)), (module, dest)


@pytest.mark.parametrize("module", sorted(TORCH_FREE))
def test_torch_free_modules(module):
    path = modules()[module]
    heavy = [t for t, _ in imports(path, top_level_only=True) if t.split(".")[0] in HEAVY]
    assert not heavy, f"{module} imports {heavy} at import time"


def test_no_private_names_across_modules():
    """`from padim.x import _private` and `module._private(...)` on padim modules."""
    wrong = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("padim"):
                for a in node.names:
                    if a.name.startswith("_") and a.name != "__version__":
                        wrong.append(f"{module}: from {node.module} import {a.name}")
                    aliases[a.asname or a.name] = node.module
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.value.id not in ("self", "cls")
            ):
                wrong.append(f"{module}: {node.value.id}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def test_options_agree_with_the_registries():
    from padim import options
    from padim.core.backbones import available_backbones
    from padim.core.scoring import SCORE_MODES

    assert sorted(options.BACKBONES) == available_backbones()
    assert SCORE_MODES == options.SCORE_MODES


def test_light_modules_import_without_torch():
    """The CLI parser, the service and the ONNX path load with torch blocked."""
    import subprocess
    import sys

    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'timm'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import padim.cli, padim.cli.parser, padim.service.app, padim.deploy.predict\n"
        "padim.cli.parser.build_parser().parse_args(['fit', 'x', '--out', 'm'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_import_circles():
    """No padim module reaches itself through its imports, lazy and type-checking ones
    included (a package's __init__ re-exporting its modules is not a circle of its own)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        graph[module] = {
            dest
            for target, names in imports(path)
            for dest in padim_targets(target, names)
            if dest in known and dest != module and not module.startswith(dest + ".")
        }
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen and known[nxt].name != "__init__.py":
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not circles, "\n".join(sorted(set(circles))[:10])
