"""The options every catalogue command shares (where the catalogue is, who acts) and opening
it; light to import."""

from __future__ import annotations

import argparse
import os
from typing import Any

from padim import options
from padim.cli.arguments import add


def add_catalogue(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """--catalogue and --files; `default` None: no catalogue unless one is named."""
    g = p.add_argument_group("catalogue")
    g.add_argument(
        options.CATALOGUE.flag,
        metavar="DIR|URL",
        default=default,
        help=options.CATALOGUE.describe() if default else options.CATALOGUE.help,
    )
    add(g, options.FILES, metavar="DIR")


def catalogue_location(args: argparse.Namespace, needed: bool = True) -> str | None:
    """--catalogue, else $PADIM_CATALOGUE, else the default folder (when `needed`)."""
    found = args.catalogue or os.environ.get(options.CATALOGUE_ENV)
    return found or (options.CATALOGUE.default if needed else None)


def open_from(args: argparse.Namespace) -> Any:
    """The catalogue the arguments name, opened (created and migrated if need be)."""
    from padim.lifecycle.database import open_catalogue

    return open_catalogue(catalogue_location(args) or options.CATALOGUE.default, args.files)


def add_actor(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--actor", default=None, help="who makes the change, for the audit trail (default: you)"
    )


def actor_of(args: argparse.Namespace) -> str:
    from padim.lifecycle.audit import local_user

    return args.actor or local_user()
