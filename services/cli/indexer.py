"""Client-side bulk indexing for `loupe index`: batches, retries, per-file errors, progress."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from services.client.sdk import ImageInput, LoupeCallError, LoupeClient, TextInput

MAX_BATCH_BYTES = 32 * 1024 * 1024
RETRIES = 5
_ITEM_FIELD = re.compile(r"^items\[(\d+)\]")


@dataclass
class IndexReport:
    created: int = 0
    existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    # One line per recording indexed (duration, language, segments).
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        done = self.created + self.existing
        rate = done / self.seconds if self.seconds else 0.0
        lines = [
            f"indexed {done} item(s): {self.created} new, {self.existing} already present; "
            f"{len(self.failed)} failed; {self.seconds:.1f} s ({rate:.1f} items/s)"
        ]
        lines += [f"  {note}" for note in self.notes]
        lines += [f"  FAILED {name}: {reason}" for name, reason in self.failed]
        return "\n".join(lines)


def index_paths(
    client: LoupeClient,
    files: list[Path],
    texts: list[tuple[str, str]],
    *,
    metadata: dict[str, Any],
    collection: str,
    batch_size: int,
    audio: list[Path] = (),
    language: str = "",
) -> IndexReport:
    report, start = IndexReport(), time.monotonic()
    with tqdm(
        total=len(files) + len(texts) + len(audio), unit="item", file=sys.stderr, mininterval=1.0, disable=None
    ) as bar:
        for path in audio:
            _send_audio(client, path, report, metadata=metadata, collection=collection, language=language)
            bar.update(1)
        for batch in _image_batches(files, batch_size, report, bar):
            items = [ImageInput(data, source=str(path), metadata=metadata) for path, data in batch]
            _send(lambda xs: client.index_images(xs, collection=collection), items, [str(p) for p, _ in batch], report)
            bar.update(len(batch))
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            items = [TextInput(text, source=name, metadata=metadata) for name, text in chunk]
            _send(lambda xs: client.index_texts(xs, collection=collection), items, [n for n, _ in chunk], report)
            bar.update(len(chunk))
    report.seconds = time.monotonic() - start
    return report


def _image_batches(files: list[Path], batch_size: int, report: IndexReport, bar):
    batch, size = [], 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            report.failed.append((str(path), f"cannot read: {exc.strerror or exc}"))
            bar.update(1)
            continue
        if batch and (len(batch) >= batch_size or size + len(data) > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((path, data))
        size += len(data)
    if batch:
        yield batch


def _send(call, items: list, names: list[str], report: IndexReport) -> None:
    """Send one batch; drop the items the server rejects and resend the rest once."""
    for attempt in range(RETRIES):
        try:
            results = call(items)
        except LoupeCallError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT and exc.violations:
                bad = _bad_items(exc, len(items))
                if bad:
                    report.failed += [(names[i], why) for i, why in sorted(bad.items())]
                    keep = [i for i in range(len(items)) if i not in bad]
                    items, names = [items[i] for i in keep], [names[i] for i in keep]
                    if not items:
                        return
                    continue
            if exc.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE) and attempt < RETRIES - 1:
                time.sleep(0.5 * 2**attempt)
                continue
            report.failed += [(n, f"{exc.code.name}: {exc.reason}") for n in names]
            return
        for _, created in results:
            if created:
                report.created += 1
            else:
                report.existing += 1
        return
    report.failed += [(n, "gave up after retries") for n in names]


def _send_audio(client: LoupeClient, path: Path, report: IndexReport, **kwargs) -> None:
    """One recording per call (the server transcribes it); retried when the server is busy."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        report.failed.append((str(path), f"cannot read: {exc.strerror or exc}"))
        return
    for attempt in range(RETRIES):
        try:
            result = client.index_audio(data, source=str(path), **kwargs)
        except LoupeCallError as exc:
            busy = exc.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
            if busy and attempt < RETRIES - 1:
                time.sleep(0.5 * 2**attempt)
                continue
            report.failed.append((str(path), f"{exc.code.name}: {exc.reason}"))
            return
        if result.created:
            report.created += 1
        else:
            report.existing += 1
        report.notes.append(f"{path}: {result.duration_s:.1f} s, {result.language}, {result.segment_count} segment(s)")
        return


def _bad_items(exc: LoupeCallError, n: int) -> dict[int, str]:
    bad = {}
    for fld, why in exc.violations:
        m = _ITEM_FIELD.match(fld)
        if m and int(m.group(1)) < n:
            bad[int(m.group(1))] = re.sub(r"^items\[\d+\]: ", "", why)
    return bad
