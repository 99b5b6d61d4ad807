"""`loupe`: run the service and talk to it.

loupe serve [--bundled-models]          start Ray Serve with ray_config.yaml
loupe index PATH... [--texts FILE]      index image and audio files/folders (and texts)
loupe index --batch SOURCE              catalog pipeline (Ray Data) straight into the store
loupe transcribe FILE                   print a timestamped transcript
loupe ask [FILE...] "question"          ask about screenshots and/or indexed images
loupe search TEXT | --image FILE        search, print a table
loupe delete ID... | --where k=v        delete items
loupe status                            health, model, collections
loupe tls-proxy --cert C --key K [--run]  nginx terminating TLS in front of the gRPC port
loupe eval ask CASES.jsonl [--json]     answer-quality eval against the running service
loupe eval retrieval CASES.jsonl        search-quality eval: recall, MRR, nDCG per mode (--report DIR)
loupe calibrate [COLLECTION]            fit confidence per collection: hits get confidence, no_match
loupe feedback REQUEST_ID --up|--down   rate a search or an answer (or: loupe feedback export DIR)
loupe review [--all] | --done ID        abstained, blocked and down-voted calls, for a human
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from services.client.sdk import LoupeCallError, LoupeClient

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "ray_config.yaml"


# Exit status of a command whose reader went away (`loupe search ... | head`): a shell's 128 +
# SIGPIPE, as the Unix tools give when killed by it.
BROKEN_PIPE_EXIT = 141


def main(argv: list[str] | None = None) -> int:
    """Every command; one whose output pipe closed ends quietly (no trace) with 141."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here for output still buffered
        return code
    except BrokenPipeError:
        # Python would print a second trace flushing stdout at exit: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_EXIT


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from services.cli.launch import serve

        return serve(
            config=args.config,
            ray_address=args.ray_address,
            dashboard=args.dashboard,
            bundled=args.bundled_models,
            data_dir=args.data_dir,
            port=args.port,
            host=args.host,
            qdrant_url=args.qdrant_url,
            model=args.model,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            clients_file=args.clients,
        )
    if args.command == "keys":
        from services.cli import keys

        return keys.run(args)
    if args.command == "tls-proxy":
        from services.cli import tls

        return tls.run(args)
    if args.command == "index" and args.batch:
        from services.cli import batch as batch_cli

        return batch_cli.run(args)
    try:
        with LoupeClient(
            args.target,
            api_key=args.api_key,
            timeout_s=args.timeout,
            tls=args.tls,
            ca_file=args.ca_file,
            cert_file=args.cert,
            key_file=args.key,
        ) as client:
            return COMMANDS[args.command](client, args)
    except ValueError as exc:  # a TLS file that cannot be read
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    env_tls = os.environ.get("LOUPE_TLS", "").lower() in ("1", "true", "yes")
    p.add_argument("--tls", action="store_true", default=env_tls, help="speak TLS (to `loupe tls-proxy`; LOUPE_TLS=1)")
    p.add_argument(
        "--ca-file", default=os.environ.get("LOUPE_CA_FILE"), help="PEM CA to trust for --tls (default: system roots)"
    )
    p.add_argument("--cert", default=os.environ.get("LOUPE_CLIENT_CERT"), help="client certificate (PEM) for --tls")
    p.add_argument("--key", default=os.environ.get("LOUPE_CLIENT_KEY"), help="its private key (PEM)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the service (Ray Serve, gRPC on port 9000)")
    s.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config (default: the repo's ray_config.yaml)")
    s.add_argument("--bundled-models", action="store_true", help="run on the small models shipped with Loupe")
    s.add_argument("--data-dir", default=os.environ.get("LOUPE_DATA_DIR", "./loupe-data"))
    s.add_argument("--port", type=int, default=None, help="gRPC port (default: from the config, 9000)")
    s.add_argument(
        "--host",
        default=None,
        help="gRPC interface (default: from the config, 127.0.0.1; 0.0.0.0 for every interface, behind TLS)",
    )
    s.add_argument("--http-port", type=int, default=None, help="Serve's HTTP port (default: from the config)")
    s.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Prometheus metrics port (default: from the config, 9464; 0: off)",
    )
    s.add_argument("--qdrant-url", default=os.environ.get("LOUPE_QDRANT_URL"), help="use a Qdrant server")
    s.add_argument("--model", default=None, help="CLIP model spec (see README)")
    s.add_argument("--clients", default=None, help="the gateway's clients file (see README 'Access')")
    s.add_argument("--dashboard", action="store_true", help="also start the Ray dashboard (about 1 GB more memory)")
    s.add_argument(
        "--ray-address",
        default=None,
        help="deploy onto this Ray cluster (e.g. 'auto', 'ray://head:10001'); default: a private local Ray",
    )

    for name, what in (
        ("usage", "usage per day, client, RPC and status code"),
        ("audit", "the audit trail of writes and deletes"),
    ):
        u = sub.add_parser(name, help=f"{what} (needs the admin right)")
        u.add_argument("--client", default="", help="only this client")
        u.add_argument("--since", default="", help="from this UTC day (YYYY-MM-DD)")
        u.add_argument("--json", action="store_true")
        if name == "audit":
            u.add_argument("--limit", type=int, default=0, help="most records (default 1000)")

    from services.cli import keys

    keys.add_arguments(sub.add_parser("keys", help="make API keys and list the clients of a clients file"))
    from services.cli import tls

    tls.add_arguments(sub.add_parser("tls-proxy", help="TLS in front of the service: nginx config, or run nginx"))

    i = sub.add_parser("index", help="index image and audio files or folders (recursively)")
    i.add_argument("paths", nargs="*", type=Path)
    i.add_argument("--texts", type=Path, help="also index each non-empty line of this file as a text item")
    i.add_argument("--meta", action="append", default=[], metavar="K=V", help="metadata for every item")
    i.add_argument("--batch-size", type=int, default=16)
    i.add_argument("--language", default="", help="spoken language of audio files (default: detect)")
    _collection(i)
    from services.cli import batch as batch_cli

    batch_cli.add_arguments(i)

    t = sub.add_parser("transcribe", help="print a timestamped transcript of an audio file (nothing is stored)")
    t.add_argument("file", type=Path)
    t.add_argument("--language", default="", help="e.g. en (default: detect)")
    t.add_argument("--words", action="store_true", help="also print word timings")

    q = sub.add_parser("search", help="search by text, or by image with --image")
    q.add_argument("query", nargs="?", help="text query")
    q.add_argument("--image", type=Path, help="search by this image file")
    q.add_argument("--id", help="search by an indexed item's id")
    q.add_argument("--limit", type=int, default=10)
    q.add_argument("--offset", type=int, default=0)
    q.add_argument("--modality", action="append", default=[], choices=["image", "text", "audio_segment", "audio"])
    q.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="EXPR",
        help="k=v, k=a|b (any of), k>=n, k<n ... (all must hold)",
    )
    q.add_argument("--min-score", type=float, default=None, help="raw score floor (cosine, BM25)")
    q.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="on a calibrated collection, drop hits below this confidence (0..1; default: the server's)",
    )
    q.add_argument(
        "--mode",
        choices=["dense", "keyword", "hybrid"],
        default="dense",
        help="dense: CLIP; keyword: exact words/codes; hybrid: both, fused by calibrated confidence",
    )
    q.add_argument(
        "--rerank",
        default=None,
        metavar="NAME",
        help="rerank with this configured reranker (settings rerank.rerankers); 'none': off "
        "(default: the collection's)",
    )
    q.add_argument("--rerank-candidates", type=int, default=None, metavar="N", help="rerank at most N hits")
    q.add_argument(
        "--mmr", type=float, default=None, metavar="LAMBDA", help="diversify the page (0..1; 1: relevance only)"
    )
    q.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    _collection(q)

    a = sub.add_parser("ask", help="ask about screenshots (files) and/or indexed images")
    a.add_argument("args", nargs="+", metavar="[FILE...] QUESTION", help="image files, then the question")
    a.add_argument("-k", type=int, default=None, help="indexed images to retrieve (default 3 without files, 0 with)")
    a.add_argument("--where", action="append", default=[], metavar="EXPR")
    a.add_argument("--json", action="store_true")
    _collection(a)

    d = sub.add_parser("delete", help="delete items by id, or by --where filter")
    d.add_argument("ids", nargs="*")
    d.add_argument("--where", action="append", default=[], metavar="EXPR")
    _collection(d)

    sub.add_parser("status", help="health, model and collections")

    from services.cli import feedback

    feedback.add_arguments(
        sub.add_parser("feedback", help="rate a search or answer by its request id; 'export DIR': eval cases"),
        sub.add_parser("review", help="abstained, blocked and down-voted calls (needs the admin right)"),
    )

    from services.cli import evals

    evals.add_arguments(
        sub.add_parser("eval", help="evals on your own cases against the running service (--baseline: a gate)"),
        sub.add_parser("calibrate", help="fit a collection's confidence calibration (hits get confidence, no_match)"),
        _collection,
    )
    return p


def _collection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", default="", help="collection (default: 'default')")


def cmd_index(client: LoupeClient, args) -> int:
    from services.cli.indexer import index_paths

    meta = _where(args.meta) if args.meta else {}
    images, audio = _media_files(args.paths)
    texts = _text_lines(args.texts) if args.texts else []
    if not images and not audio and not texts:
        print("nothing to index: give image or audio files/folders, or --texts FILE", file=sys.stderr)
        return 2
    report = index_paths(
        client,
        images,
        texts,
        metadata=meta,
        collection=args.collection,
        batch_size=args.batch_size,
        audio=audio,
        language=args.language,
    )
    print(report.summary())
    return 1 if report.failed else 0


def cmd_search(client: LoupeClient, args) -> int:
    opts = {
        "limit": args.limit,
        "offset": args.offset,
        "modalities": args.modality,
        "where": _where(args.where),
        "score_threshold": args.min_score,
        "min_confidence": args.min_confidence,
        "collection": args.collection,
        "rerank": args.rerank,
        "rerank_candidates": args.rerank_candidates,
        "mmr_lambda": args.mmr,
    }
    if args.query and not (args.image or args.id):
        opts["mode"] = args.mode
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
        if result.no_match or not result.hits:  # one line that says so, not silence
            print(json.dumps({"no_match": result.no_match, "hits": 0, "request_id": result.request_id}))
        for h in result.hits:
            record = {
                "id": h.id,
                "score": round(h.score, 4),
                "confidence": None if h.confidence is None else round(h.confidence, 4),
                "rerank_score": None if h.rerank_score is None else round(h.rerank_score, 4),
                "no_match": False,
                "modality": h.item.modality,
                "sources": h.item.sources,
                "text": h.item.text,
                "metadata": h.item.metadata,
                "request_id": result.request_id,
            }
            if h.item.modality == "audio_segment":
                record.update(parent_id=h.item.parent_id, start_s=h.item.start_s, end_s=h.item.end_s)
            print(json.dumps(record))
    else:
        print(format_hits(result))
    return 0


def format_hits(result) -> str:
    if result.no_match:
        line = "no match: nothing in the collection is likely relevant (lower --min-confidence to see the nearest)"
        return line + (f"\nrequest {result.request_id}" if result.request_id else "")
    rows = [("#", "score", "confidence", "modality", "id", "source / text")]
    for rank, h in enumerate(result.hits, 1):
        where = _where_found(h.item)
        confidence = "-" if h.confidence is None else f"{h.confidence:.2f}"
        rows.append((str(rank), f"{h.score:.4f}", confidence, h.item.modality, _short(h.id, 24), _short(where, 60)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    footer = f"{len(result.hits)} hit(s), model {result.model_id}"
    if result.request_id:
        footer += f", request {result.request_id}"
    if result.next_offset:
        footer += f", more with --offset {result.next_offset}"
    if result.query_truncated:
        footer += " (query was cut to the model's context length)"
    if result.calibration:
        footer += f"\nno confidence: {result.calibration}"
    if result.rerank:
        footer += f"\nrerank: {result.rerank}"
    if result.diversity:
        footer += f"\ndiversity: {result.diversity}"
    return "\n".join(lines + [footer])


def _where_found(item) -> str:
    source = item.sources[0] if item.sources else ""
    if item.modality == "audio_segment":
        return f"{source or item.parent_id} @ {clock(item.start_s)}-{clock(item.end_s)}: {item.text}"
    if item.modality == "audio":
        return f"{source or item.id} ({clock(item.duration_s)}): {item.text}"
    if item.modality == "image":  # the text of an image is its OCR text: name the file first
        return ", ".join(item.sources) or item.text or item.id
    return item.text or ", ".join(item.sources) or "-"


def clock(seconds: float) -> str:
    """01:23, or 1:02:03 past an hour."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m:02d}:{s % 60:02d}"


def cmd_transcribe(client: LoupeClient, args) -> int:
    for part in client.transcribe(args.file.read_bytes(), language=args.language, word_timestamps=args.words):
        if hasattr(part, "language_probability"):
            print(
                f"# {args.file}: {clock(part.duration_s)}, language {part.language} "
                f"(p={part.language_probability:.2f}), model {part.model_id}"
            )
            continue
        if hasattr(part, "loops_cut"):
            if part.repeated_segments or part.loops_cut or part.fallback_windows:
                print(
                    f"# controls: {part.fallback_windows} of {part.windows} window(s) decoded again, "
                    f"{part.repeated_segments} repeated segment(s) dropped, {part.loops_cut} loop(s) cut "
                    f"({part.words_removed} word(s) removed)"
                )
            continue
        print(f"[{clock(part.start_s)} - {clock(part.end_s)}] {part.text.strip()}", flush=True)
        if args.words:
            print("    " + " ".join(f"{w.text}@{w.start_s:.2f}" for w in part.words))
    return 0


def cmd_delete(client: LoupeClient, args) -> int:
    if bool(args.ids) == bool(args.where):
        print("give ids or --where, not both or neither", file=sys.stderr)
        return 2
    deleted = client.delete(args.ids, where=_where(args.where) or None, collection=args.collection)
    print(f"deleted {deleted} item(s)")
    return 0


def cmd_status(client: LoupeClient, args) -> int:
    try:
        health = client.health()
    except LoupeCallError as exc:
        if _print_start_up(args.target):
            return 3
        raise exc
    if health != "SERVING" and _print_start_up(args.target):
        return 3
    print(f"health: {health}")
    st = client.status()
    print(
        f"model: {st.model_id} ({st.model_version}), profile {st.profile}, store {st.store_backend}, loupe {st.version}"
    )
    for c in st.collections:
        print(f"  collection {c.name}: {c.count} item(s), {c.model_id} dim {c.dim}")
        if c.calibration:
            print(f"    {c.calibration}")
    return 0


def cmd_usage(client: LoupeClient, args) -> int:
    rows = client.usage(client=args.client or "", since=args.since or "")
    if args.json:
        fields = ("day", "client", "rpc", "code", "calls", "items", "audio_seconds", "tokens_in", "tokens_out")
        print(json.dumps([{f: getattr(r, f) for f in fields} for r in rows], indent=2))
        return 0
    print(
        f"{'day':<10}  {'client':<20} {'rpc':<12} {'code':<18} {'calls':>7} {'items':>7} {'audio s':>9}"
        f" {'tokens in':>10} {'tokens out':>10}"
    )
    for r in rows:
        print(
            f"{r.day:<10}  {r.client:<20} {r.rpc:<12} {r.code:<18} {r.calls:>7} {r.items:>7} {r.audio_seconds:>9.1f}"
            f" {r.tokens_in:>10} {r.tokens_out:>10}"
        )
    return 0


def cmd_audit(client: LoupeClient, args) -> int:
    records = client.audit(client=args.client or "", since=args.since or "", limit=args.limit)
    if args.json:
        fields = ("at", "client", "rpc", "collection", "code", "count")
        print(
            json.dumps(
                [{**{f: getattr(r, f) for f in fields}, "target": json.loads(r.target_json)} for r in records], indent=2
            )
        )
        return 0
    for r in records:
        print(f"{r.at}  {r.client:<20} {r.rpc:<12} {r.collection:<16} {r.code:<10} {r.count:>5}  {r.target_json}")
    return 0


def _print_start_up(target: str) -> bool:
    """For a service on this machine that is still starting: what it waits for. False if unknown."""
    import time

    from services.cli.launch import read_state

    host, _, port = target.rpartition(":")
    if host not in ("localhost", "127.0.0.1", "[::1]", "0.0.0.0") or not port.isdigit():
        return False
    state = read_state(int(port))
    if state is None or state.get("phase") == "serving":
        return False
    waited = time.time() - float(state.get("started_at", time.time()))
    print(f"health: {state['phase'].upper()} (loupe serve pid {state['pid']}, for {waited:.0f} s)")
    for name, what in (state.get("waiting_for") or {}).items():
        print(f"  waiting for {name}: {what}")
    return True


def cmd_ask(client: LoupeClient, args) -> int:
    from google.protobuf.json_format import MessageToDict

    *files, question = args.args
    images = [Path(f).read_bytes() for f in files]
    k = args.k if args.k is not None else (0 if images else 3)
    answer = client.ask(question, images, k=k, collection=args.collection, where=_where(args.where) or None)
    if args.json:
        print(json.dumps(MessageToDict(answer, preserving_proto_field_name=True)))
        return 0
    verdict = _evals().qa_verdict(answer.verdict)
    print(f"{verdict.upper()}: {answer.text}")
    for c in answer.cited:
        where = f" @ {clock(c.start_s)}-{clock(c.end_s)}" if c.HasField("start_s") else ""
        print(f"  [{c.id}] {c.source}{where}: {c.snippet}")
    for g in answer.guards:
        mark = "ok " if g.passed else "FAIL"
        detail = "; ".join(x for x in (g.reason, g.action) if x)
        print(f"  [{mark}] {g.guard}" + (f": {detail}" if detail else ""))
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in sorted(answer.timings_s.items()))
    print(f"model {answer.model_id}, prompt {answer.prompt_version}, attempts {answer.attempts}; {timings}")
    print(f"request {answer.request_id} (rate it: loupe feedback {answer.request_id} --up | --down)")
    return 0 if verdict == "answered" else 1


COMMANDS = {
    "index": cmd_index,
    "ask": cmd_ask,
    "search": cmd_search,
    "delete": cmd_delete,
    "status": cmd_status,
    "usage": cmd_usage,
    "audit": cmd_audit,
    "transcribe": cmd_transcribe,
    "eval": lambda client, args: _evals().cmd_eval(client, args),
    "calibrate": lambda client, args: _evals().cmd_calibrate(client, args),
    "feedback": lambda client, args: _feedback().cmd_feedback(client, args),
    "review": lambda client, args: _feedback().cmd_review(client, args),
}


def _evals():
    from services.cli import evals

    return evals


def _feedback():
    from services.cli import feedback

    return feedback


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


def _media_files(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(images, audio): folders are walked by extension; files named explicitly are sent as
    audio when their extension says so, else as images (the server judges the content)."""
    from indexing.batch.catalog import AUDIO_SUFFIXES, IMAGE_SUFFIXES  # PyAV and numpy: only for `loupe index`

    images, audio = [], []
    for path in paths:
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for p in found:
            suffix = p.suffix.lower()
            if suffix in AUDIO_SUFFIXES:
                audio.append(p)
            elif suffix in IMAGE_SUFFIXES or not path.is_dir():
                images.append(p)
    return images, audio


def _text_lines(path: Path) -> list[tuple[str, str]]:
    return [(f"{path}:{n}", line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
