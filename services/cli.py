"""`loupe`: run the service and talk to it.

    loupe serve [--bundled-models]          start Ray Serve with ray_config.yaml
    loupe index PATH... [--texts FILE]      index image files/folders (and texts)
    loupe search TEXT | --image FILE        search, print a table
    loupe delete ID... | --where k=v        delete items
    loupe status                            health, model, collections
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from services.client import LoupeCallError, LoupeClient

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "ray_config.yaml"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from services.launch import serve

        return serve(config=args.config, ray_address=args.ray_address, bundled=args.bundled_models, data_dir=args.data_dir, port=args.port,
                     qdrant_url=args.qdrant_url, model=args.model, http_port=args.http_port)
    try:
        with LoupeClient(args.target, api_key=args.api_key, timeout_s=args.timeout) as client:
            return COMMANDS[args.command](client, args)
    except LoupeCallError as exc:
        print(f"error: {exc.code.name}: {exc.reason}", file=sys.stderr)
        for fld, why in exc.violations:
            print(f"  {fld}: {why}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loupe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=os.environ.get("LOUPE_TARGET", "localhost:9000"), help="gRPC address")
    p.add_argument("--api-key", default=os.environ.get("LOUPE_API_KEY"), help="sent as 'authorization: Bearer'")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the service (Ray Serve, gRPC on port 9000)")
    s.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config (default: the repo's ray_config.yaml)")
    s.add_argument("--bundled-models", action="store_true", help="run on the small models shipped with Loupe")
    s.add_argument("--data-dir", default=os.environ.get("LOUPE_DATA_DIR", "./loupe-data"))
    s.add_argument("--port", type=int, default=None, help="gRPC port (default: from the config)")
    s.add_argument("--http-port", type=int, default=None, help="Serve's HTTP port (default: from the config)")
    s.add_argument("--qdrant-url", default=os.environ.get("LOUPE_QDRANT_URL"), help="use a Qdrant server")
    s.add_argument("--model", default=None, help="CLIP model spec (see README)")
    s.add_argument("--ray-address", default=None,
                   help="deploy onto this Ray cluster (e.g. 'auto', 'ray://head:10001'); default: a private local Ray")

    i = sub.add_parser("index", help="index image files or folders (recursively)")
    i.add_argument("paths", nargs="*", type=Path)
    i.add_argument("--texts", type=Path, help="also index each non-empty line of this file as a text item")
    i.add_argument("--meta", action="append", default=[], metavar="K=V", help="metadata for every item")
    i.add_argument("--batch-size", type=int, default=16)
    _collection(i)

    q = sub.add_parser("search", help="search by text, or by image with --image")
    q.add_argument("query", nargs="?", help="text query")
    q.add_argument("--image", type=Path, help="search by this image file")
    q.add_argument("--id", help="search by an indexed item's id")
    q.add_argument("--limit", type=int, default=10)
    q.add_argument("--offset", type=int, default=0)
    q.add_argument("--modality", action="append", default=[], choices=["image", "text", "audio_segment"])
    q.add_argument("--where", action="append", default=[], metavar="EXPR",
                   help="k=v, k=a|b (any of), k>=n, k<n ... (all must hold)")
    q.add_argument("--min-score", type=float, default=None)
    q.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    _collection(q)

    d = sub.add_parser("delete", help="delete items by id, or by --where filter")
    d.add_argument("ids", nargs="*")
    d.add_argument("--where", action="append", default=[], metavar="EXPR")
    _collection(d)

    sub.add_parser("status", help="health, model and collections")
    return p


def _collection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", default="", help="collection (default: 'default')")


def cmd_index(client: LoupeClient, args) -> int:
    from services.indexer import index_paths

    meta = _where(args.meta) if args.meta else {}
    files = _image_files(args.paths)
    texts = _text_lines(args.texts) if args.texts else []
    if not files and not texts:
        print("nothing to index: give image files/folders or --texts FILE", file=sys.stderr)
        return 2
    report = index_paths(client, files, texts, metadata=meta, collection=args.collection, batch_size=args.batch_size)
    print(report.summary())
    return 1 if report.failed else 0


def cmd_search(client: LoupeClient, args) -> int:
    opts = dict(limit=args.limit, offset=args.offset, modalities=args.modality, where=_where(args.where),
                score_threshold=args.min_score, collection=args.collection)
    if args.image:
        result = client.search_image(args.image.read_bytes(), **opts)
    elif args.id:
        result = client.search_image(id=args.id, **opts)
    elif args.query:
        result = client.search_text(args.query, **opts)
    else:
        print("give a text query, --image FILE or --id ID", file=sys.stderr)
        return 2
    if args.json:
        for h in result.hits:
            print(json.dumps({"id": h.id, "score": round(h.score, 4), "modality": h.item.modality,
                              "sources": h.item.sources, "text": h.item.text, "metadata": h.item.metadata}))
    else:
        print(format_hits(result))
    return 0


def format_hits(result) -> str:
    rows = [("#", "score", "modality", "id", "source / text")]
    for rank, h in enumerate(result.hits, 1):
        where = h.item.text or ", ".join(h.item.sources) or "-"
        rows.append((str(rank), f"{h.score:.4f}", h.item.modality, _short(h.id, 24), _short(where, 60)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    footer = f"{len(result.hits)} hit(s), model {result.model_id}"
    if result.next_offset:
        footer += f", more with --offset {result.next_offset}"
    if result.query_truncated:
        footer += " (query was cut to the model's context length)"
    return "\n".join(lines + [footer])


def cmd_delete(client: LoupeClient, args) -> int:
    if bool(args.ids) == bool(args.where):
        print("give ids or --where, not both or neither", file=sys.stderr)
        return 2
    deleted = client.delete(args.ids, where=_where(args.where) or None, collection=args.collection)
    print(f"deleted {deleted} item(s)")
    return 0


def cmd_status(client: LoupeClient, args) -> int:
    print(f"health: {client.health()}")
    st = client.status()
    print(f"model: {st.model_id} ({st.model_version}), profile {st.profile}, store {st.store_backend}, "
          f"loupe {st.version}")
    for c in st.collections:
        print(f"  collection {c.name}: {c.count} item(s), {c.model_id} dim {c.dim}")
    return 0


COMMANDS = {"index": cmd_index, "search": cmd_search, "delete": cmd_delete, "status": cmd_status}


def _where(exprs: list[str]) -> dict:
    """Parse `k=v`, `k=a|b`, `k>=1`, `k<5` into the client's `where` dict."""
    out: dict = {}
    for expr in exprs:
        for op, bound in ((">=", "gte"), ("<=", "lte"), (">", "gt"), ("<", "lt")):
            if op in expr:
                key, value = expr.split(op, 1)
                out.setdefault(key.strip(), {})[bound] = float(value)
                break
        else:
            if "=" not in expr:
                raise SystemExit(f"cannot parse filter {expr!r}: use k=v, k=a|b, k>=n or k<n")
            key, value = expr.split("=", 1)
            values = [_scalar(v) for v in value.split("|")]
            out[key.strip()] = values if len(values) > 1 else values[0]
    return out


def _scalar(text: str):
    if text in ("true", "false"):
        return text == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _image_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)  # named explicitly: let the server judge the content
    return files


def _text_lines(path: Path) -> list[tuple[str, str]]:
    return [(f"{path}:{n}", line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
