"""`padim tokens`: make, list and revoke the API tokens of a catalogue (whoever runs it on the
catalogue's computer is its admin). Its arguments and its run, side by side."""

from __future__ import annotations

import argparse
import json
from typing import Any

from padim import options
from padim.cli.catalogue_args import actor_of, add_actor, add_catalogue, open_from

NAME = "tokens"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "tokens",
        help="API tokens with roles (operator, engineer, admin): create, list, revoke",
        description="API tokens for 'padim serve --auth on': operators score images (and give "
        "feedback), engineers also promote and roll back, admins also manage tokens. A token "
        "is printed once; the catalogue keeps only its SHA-256. Needs padim[lifecycle].",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser("create", help="make a token (printed once)")
    c.add_argument("name", help="who or what holds it (e.g. line3-pc, ana)")
    c.add_argument("--role", choices=options.ROLES, default="operator", help="(default operator)")
    ls = actions.add_parser("list", help="names, roles and states (never the tokens)")
    ls.add_argument("--json", action="store_true")
    r = actions.add_parser("revoke", help="revoke a token by name")
    r.add_argument("name")
    for q in (c, ls, r):
        add_catalogue(q, options.CATALOGUE.default)
    for q in (c, r):
        add_actor(q)


def run(args: argparse.Namespace) -> int:
    from padim.lifecycle.tokens import TokenStore

    store = TokenStore(open_from(args))
    if args.action == "create":
        token = store.create(args.name, args.role, actor_of(args))
        print(token)
        return 0
    if args.action == "revoke":
        store.revoke(args.name, actor_of(args))
        print(f"revoked {args.name}")
        return 0
    found = store.listing()
    if args.json:
        print(json.dumps(found, indent=2))
    for t in found if not args.json else ():
        state = "revoked" if t["revoked"] else "active"
        made = f"{t['created_at'][:19]}  by {t['created_by']}"
        print(f"{t['name']:<24} {t['role']:<9} {state:<8} {made}")
    return 0
