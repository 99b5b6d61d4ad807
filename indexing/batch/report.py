"""What a batch run tells its user: progress while it runs, errors per item, a summary."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from indexing.batch.writer import DUPLICATE, FAILED, INDEXED, OUTCOMES, SKIPPED, UPDATED


@dataclass
class BatchSummary:
    collection: str
    vector: str
    model_id: str
    # Rows found in the source (files of a folder, data rows of a manifest).
    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    seconds: float = 0.0
    # Seconds before the first row reached the pipeline: listing the source, starting Ray,
    # learning the model's identity, opening the store.
    startup_s: float = 0.0
    # Wall-clock time the run started (the encode step's stamps are wall-clock too).
    started_at: float = field(default_factory=time.time)
    error_report: str | None = None
    # Points in the collection at the end.
    points: int | None = None
    interrupted: bool = False
    # The signal that stopped the run (SIGINT, SIGTERM, SIGHUP), when one did.
    stop_signal: int | None = None
    # After a re-embedding run: the state of the vector it filled.
    vectors: str | None = None
    # Encode stamps so far: the earliest, how many rows carry it, the latest, how many in all.
    _encoded: list[float] = field(default_factory=lambda: [float("inf"), 0, 0.0, 0], repr=False)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return self.counts[FAILED]

    @property
    def items_per_s(self) -> float:
        busy = self.seconds - self.startup_s
        return self.done / busy if busy > 0 else 0.0

    def saw_encoded(self, stamps: list[float]) -> None:
        """Note when rows left the encode step (wall-clock stamps, one per row; a batch shares
        one): the earliest, how many rows carry it, the latest, how many in all."""
        first, at_first, last, seen = self._encoded
        for t in stamps:
            if t < first:
                first, at_first = t, 0
            at_first += t == first
            last, seen = max(last, t), seen + 1
        self._encoded[:] = first, at_first, last, seen

    @property
    def first_encoded_s(self) -> float:
        """Seconds from the start until the first batch left the encode step (0: none yet)."""
        first, _, _, seen = self._encoded
        return first - self.started_at if seen else 0.0

    @property
    def steady_items_per_s(self) -> float:
        """The encode step's pace after its first batch: the pipeline's rate with every model
        loaded and every step running, what a longer catalog approaches (compare it with the
        bare encoder). 0 until a second batch."""
        first, at_first, last, seen = self._encoded
        return (seen - at_first) / (last - first) if seen and last > first else 0.0

    def text(self) -> str:
        c = self.counts
        lines = [
            f"{'interrupted' if self.interrupted else 'done'}: {self.done:,} of {self.total:,} items in "
            f"{self.seconds:.1f} s ({self.items_per_s:.1f} items/s after {self.startup_s:.1f} s start-up"
            + (
                f"; first batch encoded after {self.first_encoded_s:.1f} s, {self.steady_items_per_s:.1f} items/s from then"
                if self.steady_items_per_s
                else ""
            )
            + ")",
            f"  indexed {c[INDEXED]:,}  updated {c[UPDATED]:,}  skipped {c[SKIPPED]:,}  "
            f"duplicates {c[DUPLICATE]:,}  failed {c[FAILED]:,}",
            f"  collection {self.collection!r}, vector {self.vector!r}, model {self.model_id}"
            + (f", {self.points:,} points" if self.points is not None else ""),
        ]
        if self.vectors:
            lines.append(f"  {self.vectors}")
        if self.failed and self.error_report:
            lines.append(f"  errors: {self.error_report} (one JSON line per failed item: uri, row, stage, reason)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in asdict(self).items() if not k.startswith("_")},
            "done": self.done,
            "items_per_s": round(self.items_per_s, 2),
            "first_encoded_s": round(self.first_encoded_s, 2),
            "steady_items_per_s": round(self.steady_items_per_s, 2),
        }


class ErrorReport:
    """JSON lines, one per failed item, flushed as they come so a killed run leaves them."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._file: IO[str] | None = open(path, "w", encoding="utf-8") if path else None

    def add(self, row: dict[str, Any]) -> None:
        if self._file is not None:
            record = {
                "uri": row.get("uri") or "",
                "row": row.get("row"),
                "stage": row.get("stage") or "",
                "reason": row.get("reason") or "",
            }
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Progress:
    """A bar with items/s and ETA on a terminal; a plain line every `every_s` seconds otherwise."""

    def __init__(
        self, total: int, *, stream: IO[str] | None = None, every_s: float = 10.0, bar: bool | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.every_s = every_s
        self.counts: Counter[str] = Counter()
        self._start = time.monotonic()
        self._first: float | None = None
        self._before = 0
        self._last_line = self._start
        use_bar = self.stream.isatty() if bar is None else bar
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="item", file=self.stream, dynamic_ncols=True, smoothing=0.1)

    def start(self) -> None:
        """The pipeline starts now: rates and ETA count from here, not from start-up."""
        self._first = time.monotonic()
        self._before = sum(self.counts.values())

    def update(self, outcomes: list[str]) -> None:
        self.counts.update(outcomes)
        if self._bar is not None:
            self._bar.update(len(outcomes))
            c = self.counts
            self._bar.set_postfix_str(
                f"new {c[INDEXED]} skip {c[SKIPPED] + c[UPDATED] + c[DUPLICATE]} fail {c[FAILED]}", refresh=False
            )
        elif time.monotonic() - self._last_line >= self.every_s:
            self.line()

    def line(self) -> None:
        now = time.monotonic()
        self._last_line = now
        done = sum(self.counts.values())
        # Rows the catalog already failed are not pipeline work.
        work = done - self._before if self._first else 0
        rate = work / (now - self._first) if self._first and now > self._first else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        c = self.counts
        pct = 100.0 * done / self.total if self.total else 100.0
        print(
            f"[loupe batch] {done:,}/{self.total:,} ({pct:.1f}%) {rate:.1f} items/s, ETA {_clock(eta)}; "
            f"indexed {c[INDEXED]:,} updated {c[UPDATED]:,} skipped {c[SKIPPED]:,} "
            f"duplicates {c[DUPLICATE]:,} failed {c[FAILED]:,}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _clock(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
