"""`padim registry`: register model versions of a product, list them, promote a version to an
alias, roll an alias back, show the audit trail. Its arguments and its run, side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import add
from padim.cli.catalogue_args import actor_of, add_actor, add_catalogue, open_from
from padim.errors import PadimError

NAME = "registry"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "registry",
        help="model versions per product: register, list, promote, roll back, audit trail",
        description="The model registry of a catalogue (a folder with a SQLite database, or "
        "PostgreSQL by URL): numbered versions per product with their lineage, aliases such "
        "as production and candidate, promotion and rollback. 'padim serve --product P' serves "
        "the production version and swaps when it moves. Needs padim[lifecycle].",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = actions.add_parser("register", help="copy a fitted model file in as the next version")
    r.add_argument("product", help="product name (letters, digits, '.', '_', '-')")
    r.add_argument("model", type=Path, help="a fitted model file (.safetensors)")
    r.add_argument("--parent", type=int, default=None, help="the version it was derived from")
    r.add_argument("--note", default="", help="a note kept with the version")
    r.add_argument(
        "--evaluation",
        type=Path,
        default=None,
        help="a JSON file of the evaluation it passed (what 'padim evaluate --json FILE' wrote)",
    )
    r.add_argument("--promote", action="store_true", help="and promote it to --alias")
    add(r, options.ALIAS)
    v = actions.add_parser("versions", help="a product's versions, lineage and aliases")
    v.add_argument("product", nargs="?", help="(default: list the products)")
    v.add_argument("--json", action="store_true", help="as JSON")
    m = actions.add_parser("promote", help="point an alias at a version")
    m.add_argument("product")
    m.add_argument("version", help="a version number (3 or v3), or an alias to copy")
    add(m, options.ALIAS)
    m.add_argument(
        "--override",
        metavar="REASON",
        default=None,
        help="promote a version whose gate failed for this alias (the reason is audited)",
    )
    b = actions.add_parser("rollback", help="point an alias back at its previous version")
    b.add_argument("product")
    add(b, options.ALIAS)
    e = actions.add_parser("events", help="the audit trail (who changed what, when)")
    e.add_argument("product", nargs="?")
    e.add_argument("--limit", type=int, default=50, help="the last N events")
    for q in (r, v, m, b, e):
        add_catalogue(q, options.CATALOGUE.default)
    for q in (r, m, b):
        add_actor(q)


def run(args: argparse.Namespace) -> int:
    from padim.lifecycle.registry import Registry

    registry = Registry(open_from(args))
    if args.action == "register":
        evaluation = read_json(args.evaluation) if args.evaluation else None
        version = registry.register(
            args.product, args.model, actor_of(args), args.note, args.parent, evaluation
        )
        print(f"registered {args.product} version {version.number} ({version.path})")
        if args.promote:
            registry.promote(args.product, version.number, actor_of(args), args.alias)
            print(f"{args.product} {args.alias} -> version {version.number}")
    elif args.action == "versions":
        show_versions(registry, args.product, args.json)
    elif args.action in ("promote", "rollback"):
        if args.action == "promote":
            number = registry.promote(
                args.product, args.version, actor_of(args), args.alias, args.override
            )
        else:
            number = registry.rollback(args.product, actor_of(args), args.alias)
        print(f"{args.product} {args.alias} -> version {number}")
    else:
        from padim.lifecycle.audit import read_events

        for e in read_events(registry.catalogue.engine, args.product, max(1, args.limit)):
            detail = json.dumps(e["detail"], separators=(",", ":"))
            when, product = f"{e['at']:%Y-%m-%d %H:%M:%S}", e["product"] or "-"
            print(f"{when}  {e['actor']:<24} {e['action']:<13} {product}  {detail}")
    return 0


def show_versions(registry: Any, product: str | None, as_json: bool) -> None:
    if product is None:
        found = {p: registry.aliases(p) for p in registry.products()}
        if as_json:
            print(json.dumps(found, indent=2))
        for name, aliases in found.items() if not as_json else ():
            marks = ", ".join(f"{a} -> v{n}" for a, n in aliases.items()) or "no aliases"
            print(f"{name}: {marks}")
        return
    versions = registry.versions(product)
    aliases = registry.aliases(product)
    if as_json:
        print(
            json.dumps({"aliases": aliases, "versions": [v.to_dict() for v in versions]}, indent=2)
        )
        return
    if not versions:
        print(f"no versions of {product}")
    by_version: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    for v in versions:
        tags = f" [{', '.join(by_version[v.number])}]" if v.number in by_version else ""
        parent = f" from v{v.parent}" if v.parent else ""
        value = (v.operating_points or {}).get("threshold")
        threshold = "-" if value is None else f"{value:.4g}"
        print(
            f"v{v.number}{tags}{parent}  {v.created_at:%Y-%m-%d %H:%M}  {v.created_by}  "
            f"{v.n_train} images  threshold {threshold}{'  ' + v.note if v.note else ''}"
        )


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PadimError(f"--evaluation {path}: not a readable JSON file ({exc})") from None
    if not isinstance(value, dict):
        raise PadimError(f"--evaluation {path}: expected a JSON object")
    return value
