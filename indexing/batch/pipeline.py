"""A batch run: catalog -> Ray Data (read -> plan -> decode -> encode -> write) -> summary.

The driver (this process) lists the source into Parquet plan files, starts the pipeline on
a local Ray or an existing cluster, and turns the stream of outcomes into progress, the
error report and the summary. Only the writer actor opens the store.

Resuming is re-running: point ids come from content hashes and `plan` skips what is already
stored by this model version, so a killed run started again encodes only what is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from encoders.clip.encoder import ClipOptions
from encoders.common.errors import InvalidInput
from encoders.image.decode import ImageLimits
from indexing.batch import catalog, stages
from indexing.batch.report import BatchSummary, ErrorReport, Progress
from indexing.batch.writer import FAILED, CatalogWriter, StoreSpec
from indexing.ingest import VECTOR_NAME
from indexing.privacy import Privacy
from indexing.types import CollectionSchema

# Rows per plan file, and so per Ray Data block: a task reads its block's images into memory
# at once, and a block's outcomes reach the driver when its last row is written.
_PLAN_ROWS_PER_FILE = 128
_PLAN_SCHEMA = pa.schema([("row", pa.int64()), ("uri", pa.string()), ("meta", pa.string())])


@dataclass(frozen=True)
class BatchOptions:
    collection: str = "default"
    # CLIP model spec (encoders.clip.sources), device and precision of the encode actors.
    clip: ClipOptions = field(default_factory=ClipOptions)
    # Named vector to write. A name the collection does not have yet adds it next to the
    # serving one (re-embedding for a model change); see `new_vector`.
    vector_name: str = VECTOR_NAME
    # Add `vector_name` to an existing collection built by another model instead of failing.
    new_vector: bool = False
    # Ray cluster address ("auto", "ray://head:10001", "10.0.0.5:6379"); None: a private local Ray.
    address: str | None = None
    # Encode actors (each loads the model once) and torch threads per actor; 0 = from the CPUs.
    encode_actors: int = 0
    encode_threads: int = 0
    # Logical CPUs each encode actor reserves (0: all the cluster's CPUs but one, shared out,
    # at most 1 each), and each read/decode task.
    encode_cpus: float = 0.0
    task_cpus: float = 0.25
    # Rows per read/decode task, per forward pass, per store write.
    read_batch: int = 64
    encode_batch: int = 32
    write_batch: int = 256
    # OCR at index time: "auto" (screenshot-like images), "always", "never".
    ocr: str = "auto"
    ocr_engine: str = ""
    # Index audio files (Whisper, then CLIP text); None: audio files fail at "read".
    audio: stages.AudioOptions | None = None
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    # Personal data masked before storing (the service's `privacy:` config).
    privacy: Privacy = field(default_factory=Privacy)
    # Manifest URI column (default: the first of uri, url, path, file) and declared types.
    uri_column: str | None = None
    column_types: dict[str, str] = field(default_factory=dict)
    # After a run into a vector that is not the collection's active one, make it the active
    # one once every item has it (re-embedding for a model change).
    switch: bool = False
    # Build the store's vector index at the end (the embedded store needs it after bulk loads).
    optimize: bool = True
    # JSON lines of failed items; None: not written.
    error_report: str | None = "loupe-batch-errors.jsonl"


def run_batch(
    source: str | os.PathLike,
    store: StoreSpec,
    options: BatchOptions = BatchOptions(),
    *,
    progress: IO[str] | None = None,
    progress_every_s: float = 10.0,
    bar: bool | None = None,
) -> BatchSummary:
    """Index every item of `source` into `store`; per-item failures go to the report.

    Raises a LoupeError (InvalidInput for a bad source, ModelMismatch, StoreUnavailable,
    ModelUnavailable) when the run cannot start at all.
    """
    started, started_at = time.monotonic(), time.time()
    errors = ErrorReport(options.error_report)
    plan_dir = tempfile.mkdtemp(prefix="loupe-batch-plan-")
    try:
        total, broken = _write_plan(source, options, plan_dir, errors)
        _start_ray(options.address)
        schema, side, preprocess = _describe_model(options)
        summary = BatchSummary(
            options.collection,
            options.vector_name,
            schema.model_id,
            total=total,
            error_report=options.error_report,
            started_at=started_at,
        )
        summary.counts[FAILED] = broken
        meter = Progress(total, stream=progress, every_s=progress_every_s, bar=bar)
        meter.update([FAILED] * broken)
        try:
            with _stop_signals() as received:
                _run(plan_dir, store, options, (side, preprocess), schema, summary, meter, errors, started)
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.stop_signal = received[0] if received else signal.SIGINT
        finally:
            meter.close()
        summary.seconds = time.monotonic() - started
        return summary
    finally:
        errors.close()
        shutil.rmtree(plan_dir, ignore_errors=True)


@contextmanager
def _stop_signals():
    """SIGTERM and SIGHUP (systemd, Docker, a closed terminal) stop a run the way Ctrl-C does:
    batches in flight end, what was written stays (a rerun resumes), Ray shuts down with the
    driver. Installed after ray.init, whose own SIGTERM handler would otherwise just exit."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def stop(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(plan_dir, store, options, transform, schema, summary, meter, errors, started) -> None:
    import ray

    writer, writer_name = _writer(store, options, schema)
    described = ray.get(writer.describe.remote())
    summary.vector = described["vector"]
    ds = _dataset(plan_dir, options, transform, writer_name)
    summary.startup_s = time.monotonic() - started
    meter.start()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        summary.saw_encoded([r["encoded_at"] for r in rows if r["encoded_at"]])
        for row in rows:
            summary.counts[row["status"]] += 1
            if row["status"] == FAILED:
                errors.add(row)
        meter.update([r["status"] for r in rows])
    if options.new_vector or options.switch:
        # Items the source did not cover (indexed online meanwhile) get the new vector too.
        for failure in ray.get(writer.catch_up.remote(options.clip, options.image_limits)):
            summary.counts[FAILED] += 1
            errors.add(failure)
        summary.vectors = ray.get(writer.complete.remote(switch=options.switch))
    ray.get(writer.finish.remote(optimize=options.optimize))
    summary.points = ray.get(writer.describe.remote())["points"]
    ray.get(writer.close.remote())


def _write_plan(source, options: BatchOptions, plan_dir: str, errors: ErrorReport) -> tuple[int, int]:
    """Rows of the source into Parquet files (bounded memory); broken rows straight to the
    report. Returns (rows, broken rows)."""
    import json

    total, broken, chunk, part = 0, 0, [], 0

    def flush() -> None:
        nonlocal chunk, part
        if chunk:
            pq.write_table(pa.Table.from_pylist(chunk, schema=_PLAN_SCHEMA), f"{plan_dir}/part-{part:05d}.parquet")
            part, chunk = part + 1, []

    for row in catalog.rows(source, uri_column=options.uri_column, column_types=options.column_types):
        total += 1
        if row.error:
            broken += 1
            errors.add({"uri": row.uri, "row": row.row, "stage": row.stage, "reason": row.error})
            continue
        chunk.append({"row": row.row, "uri": row.uri, "meta": json.dumps(row.metadata) if row.metadata else ""})
        if len(chunk) >= _PLAN_ROWS_PER_FILE:
            flush()
    flush()
    return total, broken


def _describe_model(options: BatchOptions) -> tuple[CollectionSchema, int | None, bytes]:
    """The model's identity and preprocessing, learnt in a throw-away Ray worker so this
    process never holds the model; encode actors load their own copy."""
    import ray

    facts = ray.get(ray.remote(num_cpus=0, max_calls=1)(_model_facts).remote(options.clip))
    dim, model_id, model_version, side, preprocess = facts
    schema = CollectionSchema(vector_name=options.vector_name, dim=dim, model_id=model_id, model_version=model_version)
    return schema, side, preprocess


def _model_facts(clip: ClipOptions) -> tuple[int, str, str, int | None, bytes]:
    import pickle

    from encoders.clip.encoder import ClipEncoder

    encoder = ClipEncoder(replace(clip, threads=1)).load()
    preprocess = encoder.preprocessor()
    return (
        encoder.dim,
        encoder.model_id,
        encoder.model_version,
        stages.square_side(preprocess),
        pickle.dumps(preprocess),
    )


def _start_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True)
    # Our own progress and summary replace Ray Data's bars and execution notices.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False


class _WriterActor:
    """`CatalogWriter` opened by an explicit call, so a store that cannot be opened raises
    its own error to the driver instead of killing the actor."""

    def __init__(self) -> None:
        self.writer: CatalogWriter | None = None

    def open(self, store: StoreSpec, collection: str, schema: CollectionSchema, new_vector: bool, privacy) -> None:
        self.writer = CatalogWriter(store, collection, schema, new_vector=new_vector, privacy=privacy)

    def describe(self):
        return self.writer.describe()

    def plan(self, rows):
        return self.writer.plan(rows)

    def write(self, rows):
        return self.writer.write(rows)

    def catch_up(self, clip_options, limits):
        return self.writer.catch_up(clip_options, limits)

    def complete(self, switch: bool):
        return self.writer.complete(switch=switch)

    def finish(self, optimize: bool = True):
        return self.writer.finish(optimize=optimize)

    def close(self):
        return self.writer.close()


def _writer(store: StoreSpec, options: BatchOptions, schema: CollectionSchema):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On this node: the embedded store's folder is local to it. One actor, never restarted:
    # a second owner of the store would be a second writer.
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    # Named, so pipeline steps look it up instead of carrying its handle in their arguments.
    name = f"loupe-batch-writer-{uuid.uuid4().hex[:12]}"
    actor = (
        ray.remote(num_cpus=0, max_restarts=0, max_concurrency=1)(_WriterActor)
        .options(name=name, scheduling_strategy=here)
        .remote()
    )
    ray.get(actor.open.remote(store, options.collection, schema, options.new_vector, options.privacy))
    return actor, name


def _dataset(plan_dir: str, options: BatchOptions, transform: tuple[int | None, bytes], writer: str):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actors, threads, reserve = _encode_pool(options)
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    common = {"batch_format": "pyarrow", "num_cpus": options.task_cpus}
    max_bytes = max(options.image_limits.max_bytes, options.audio.limits.max_bytes if options.audio else 0)
    side, preprocess = transform
    decode = stages.DecodeOptions(
        preprocess=None if side else preprocess,
        limits=options.image_limits,
        ocr_mode=options.ocr,
        ocr_engine=options.ocr_engine,
        side=side,
    )
    # The plan files live on this node only.
    # One block per plan file, read on this node (the files live here). read_parquet would
    # merge small files into one block, and a block moves through the steps as a whole.
    parts = sorted(os.listdir(plan_dir))
    ds = ray.data.range(len(parts), override_num_blocks=len(parts))
    with warnings.catch_warnings():
        # "ray_remote_args is deprecated": map_batches has no named argument for a strategy.
        warnings.simplefilter("ignore")
        ds = ds.map_batches(
            _load_plan_part,
            fn_kwargs={"plan_dir": plan_dir, "parts": parts},
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=0,
            scheduling_strategy=here,
        )
    ds = ds.map_batches(
        stages.read_batch,
        fn_kwargs={"max_bytes": max_bytes, "audio": options.audio is not None},
        batch_size=options.read_batch,
        **common,
    )
    ds = ds.map_batches(
        stages.Plan,
        fn_constructor_kwargs={"writer": writer},
        batch_size=options.read_batch,
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_format="pyarrow",
        num_cpus=0,
    )
    ds = ds.map_batches(stages.decode_batch, fn_kwargs={"options": decode}, batch_size=options.read_batch, **common)
    ds = ds.map_batches(
        stages.Encode,
        fn_constructor_kwargs={"clip_options": replace(options.clip, threads=threads)},
        batch_size=options.encode_batch,
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_format="pyarrow",
        num_cpus=reserve,
    )
    if options.audio is not None:
        ds = ds.map_batches(
            stages.Transcribe,
            fn_constructor_kwargs={"clip_options": replace(options.clip, threads=threads), "audio": options.audio},
            batch_size=options.read_batch,
            compute=ray.data.ActorPoolStrategy(size=1),
            batch_format="pyarrow",
            num_cpus=0,
        )
    return ds.map_batches(
        stages.Write,
        fn_constructor_kwargs={"writer": writer},
        batch_size=options.write_batch,
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_format="pyarrow",
        num_cpus=0,
    )


def _load_plan_part(batch: pa.Table, *, plan_dir: str, parts: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(os.path.join(plan_dir, parts[i])) for i in batch["id"].to_pylist()])


def _encode_pool(options: BatchOptions) -> tuple[int, int, float]:
    """(actors, torch threads each, logical CPUs each): by default one actor per 2 CPUs of the
    cluster, with threads using them all, and reservations that leave one CPU unreserved."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    actors = options.encode_actors or max(1, int(cpus) // 2)
    threads = options.encode_threads or max(1, int(cpus) // actors)
    reserve = options.encode_cpus or max(0.0, min(1.0, (cpus - 1) / actors))
    if actors * reserve > cpus - 1:
        # Measured on Ray 2.60: once actors reserve more than all CPUs but one, Ray Data
        # schedules no read or decode task and the run waits forever.
        raise InvalidInput(
            f"{actors} encode actor(s) reserving {reserve:g} CPU each would leave less than one of the "
            f"cluster's {cpus:g} CPUs for reading and decoding; lower --actors or --encode-cpus",
            field="encode_cpus",
        )
    return actors, threads, reserve
