"""`loupe index --batch SOURCE`: the catalog pipeline (indexing.batch) from the command line.

Exit status: 0 every item indexed (or already there), 1 some items failed (see the error
report), 2 the run could not start (bad source, store in use, model mismatch or missing),
128 + the signal when stopped (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP): what was written stays.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from encoders.common.errors import LoupeError

OCR_MODES = ("auto", "always", "never")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("batch (--batch SOURCE): write straight to the store through Ray Data, no service")
    g.add_argument("--batch", metavar="SOURCE", help="folder (recursive) or manifest (.csv, .jsonl, .parquet)")
    g.add_argument("--bundled-models", action="store_true", help="use the small CLIP shipped with Loupe")
    g.add_argument(
        "--config",
        default=None,
        help="the service's settings (model, OCR, privacy) from this Serve config (default: the repo's ray_config.yaml)",
    )
    g.add_argument("--model", default=None, help="CLIP model spec (default: the service's)")
    g.add_argument("--device", default=None, help="auto, cpu, cuda")
    g.add_argument("--data-dir", default=None, help="embedded store folder (default: LOUPE_DATA_DIR or ./loupe-data)")
    g.add_argument("--qdrant-url", default=None, help="write to this Qdrant server instead")
    g.add_argument("--qdrant-path", default=None, help="write to a qdrant-client local folder instead")
    g.add_argument("--address", default=None, help="run on this Ray cluster (e.g. auto, head:6379); default: local")
    g.add_argument("--vector", default=None, help="named vector to fill (default: clip)")
    g.add_argument(
        "--new-vector",
        action="store_true",
        help="add --vector to a collection built by another model (re-embedding), old one keeps serving",
    )
    g.add_argument(
        "--switch",
        action="store_true",
        help="after filling --vector on every item, make it the collection's active vector",
    )
    g.add_argument("--actors", type=int, default=0, help="encode actors (default: one per 2 CPUs)")
    g.add_argument("--threads", type=int, default=0, help="torch threads per encode actor (default: CPUs/actors)")
    g.add_argument(
        "--encode-cpus",
        type=float,
        default=0.0,
        help="logical CPUs each encode actor reserves (default: all but one CPU shared out, at most 1)",
    )
    g.add_argument("--task-cpus", type=float, default=0.25, help="logical CPUs each read/decode task reserves")
    g.add_argument("--read-batch", type=int, default=64, help="rows per read/decode task")
    g.add_argument("--encode-batch", type=int, default=32, help="images per forward pass")
    g.add_argument("--write-batch", type=int, default=256, help="points per store write")
    g.add_argument("--ocr", choices=OCR_MODES, default=None, help="OCR at index time (default: the service's)")
    g.add_argument("--no-audio", action="store_true", help="report audio files as failed instead of indexing them")
    g.add_argument("--uri-column", default=None, help="manifest column with the URIs (default: uri/url/path/file)")
    g.add_argument(
        "--column-type",
        action="append",
        default=[],
        metavar="NAME=TYPE",
        help="declare a manifest column's type: str int float bool date list[str] ...",
    )
    g.add_argument("--errors", default="loupe-batch-errors.jsonl", help="error report (JSON lines)")
    g.add_argument("--summary-json", default=None, help="also write the summary as JSON here")
    g.add_argument("--no-optimize", action="store_true", help="skip building the vector index at the end")
    g.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines (no TTY)")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from indexing.batch import catalog
    from indexing.batch.pipeline import BatchOptions, run_batch
    from services.cli.launch import app_args_of
    from services.config import load_settings

    # The same settings as the service: what it masks at rest, the batch path masks too.
    try:
        app_args = app_args_of(args.config)
        if args.bundled_models:
            app_args["profile"] = "bundled"
        settings = load_settings(app_args)
    except (LoupeError, ValidationError) as e:
        print(f"error: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 2
    # Flags given on the command line win over LOUPE_* variables.
    if args.model:
        settings.encoder.model = args.model
    if args.device:
        settings.encoder.device = args.device
    if args.data_dir:
        settings.data_dir = str(Path(args.data_dir).expanduser().resolve())
    try:
        store = _store(args, settings)
        options = BatchOptions(
            collection=args.collection or "default",
            clip=settings.clip_options(),
            vector_name=args.vector or "clip",
            new_vector=args.new_vector,
            switch=args.switch,
            address=args.address,
            encode_actors=args.actors,
            encode_threads=args.threads,
            encode_cpus=args.encode_cpus,
            task_cpus=args.task_cpus,
            read_batch=args.read_batch,
            encode_batch=args.encode_batch,
            write_batch=args.write_batch,
            ocr=args.ocr or settings.ocr.mode,
            ocr_engine=settings.ocr.engine,
            audio=None if args.no_audio else _audio(settings),
            image_limits=settings.limits.image_limits(),
            privacy=settings.privacy_policy(),
            uri_column=args.uri_column,
            column_types=catalog.parse_column_types(args.column_type),
            optimize=not args.no_optimize,
            error_report=args.errors,
        )
        summary = run_batch(args.batch, store, options, progress_every_s=args.progress_every)
    except LoupeError as e:
        print(f"error: {e.reason}", file=sys.stderr)
        return 2
    except Exception as e:  # Ray wraps errors raised in its workers
        cause = getattr(e, "cause", None)
        if isinstance(cause, LoupeError):
            print(f"error: {cause.reason}", file=sys.stderr)
            return 2
        raise
    print(summary.text())
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary.to_json(), f, indent=2)
    if summary.interrupted:
        # What was written stays; a rerun resumes. Exit code: 128 + the signal (SIGINT 130).
        return 128 + (summary.stop_signal or 2)
    return 1 if summary.failed else 0


def _store(args, settings):
    from encoders.common.errors import InvalidInput
    from indexing.batch.writer import StoreSpec

    chosen = [x for x in (args.qdrant_url, args.qdrant_path) if x]
    if len(chosen) > 1:
        raise InvalidInput("give at most one of --qdrant-url and --qdrant-path", field="store")
    if args.qdrant_path:
        return StoreSpec(qdrant_path=args.qdrant_path)
    url = args.qdrant_url or settings.qdrant_url
    if url:
        return StoreSpec(url=url, api_key=settings.qdrant_api_key)
    return StoreSpec(data_dir=settings.data_dir)


def _audio(settings):
    from indexing.batch.stages import AudioOptions

    t = settings.transcriber
    return AudioOptions(
        backend=t.backend,
        model=t.spec,
        transcribe=settings.transcribe_options(),
        limits=settings.limits.audio_limits(),
        chunk_overlap_tokens=t.chunk_overlap_tokens,
    )
