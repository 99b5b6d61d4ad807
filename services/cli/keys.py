"""`loupe keys`: make a client's API key and list the clients of a clients file."""

from __future__ import annotations

import argparse
import json
import os
import sys

from encoders.common.errors import InvalidInput
from services.gateway.clients import RIGHTS, hash_key, load_clients, new_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True)
    c = sub.add_parser("create", help="print a new key once, and the clients-file entry that admits it")
    c.add_argument("client", help="client id (letters, digits, '.', '_', '-')")
    c.add_argument("--rights", default="search", help=f"comma-separated: {', '.join(RIGHTS)} (default: search)")
    c.add_argument("--collections", default="*", help="comma-separated names or 'prefix*' (default: '*', all)")
    ls = sub.add_parser("list", help="the clients of a clients file (never their keys)")
    ls.add_argument("--clients", default=os.environ.get("LOUPE_CLIENTS_FILE"), help="the clients file")
    ls.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    try:
        return _create(args) if args.keys_command == "create" else _list(args)
    except InvalidInput as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 2


def _create(args: argparse.Namespace) -> int:
    rights = [r.strip() for r in args.rights.split(",") if r.strip()]
    collections = [c.strip() for c in args.collections.split(",") if c.strip()]
    bad = [r for r in rights if r not in RIGHTS]
    if bad or not rights:
        raise InvalidInput(f"rights must be some of {', '.join(RIGHTS)}" + (f", not {', '.join(bad)}" if bad else ""))
    if not collections:
        raise InvalidInput("give at least one collection name, 'prefix*' or '*'")
    key = new_key()
    print(f"key for client {args.client!r} (shown once; keep it in a secret store):", file=sys.stderr, flush=True)
    print(key, flush=True)
    print(
        "\nadd to the clients file (to rotate an existing client's key instead, add the sha256 line to its"
        " keys and give the old one an 'expires:'):",
        file=sys.stderr,
    )
    quoted = ", ".join(json.dumps(c) for c in collections)
    print(
        f"  - id: {args.client}\n    keys:\n      - sha256: {hash_key(key)}\n"
        f"    rights: [{', '.join(rights)}]\n    collections: [{quoted}]",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    if not args.clients:
        raise InvalidInput("say which clients file: --clients FILE (or LOUPE_CLIENTS_FILE)")
    clients = load_clients(args.clients)
    rows = [
        {
            "id": c.id,
            "keys": len(c.keys),
            "expiring": sum(k.expires is not None for k in c.keys),
            "rights": sorted(c.rights),
            "collections": list(c.collections),
        }
        for c in clients
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'client':<24} {'keys':>4}  {'rights':<36} collections")
    for r in rows:
        keys = f"{r['keys']}" + (f" ({r['expiring']} expiring)" if r["expiring"] else "")
        print(f"{r['id']:<24} {keys:>4}  {','.join(r['rights']):<36} {', '.join(r['collections'])}")
    return 0
