"""Reading order: OCR lines into columns, rows and text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from encoders.ocr.base import OcrLine


def reading_order(lines: list[OcrLine]) -> tuple[list[OcrLine], str]:
    """Lines in reading order and the text: sidebar-like columns one after another (see
    `_split_columns`), within each rows top to bottom, within a row left to right."""
    ordered, texts = [], []
    for block in _split_columns(lines):
        for row in _rows(block):
            ordered.extend(row)
            texts.append(" ".join(l.text for l in row))
    return ordered, "\n".join(texts)


def _rows(lines: list[OcrLine]) -> list[list[OcrLine]]:
    """A line joins the last row when it overlaps the row's span by half its height or more."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda l: ((l.box[1] + l.box[3]) / 2, l.box[0])):
        top, bottom = line.box[1], line.box[3]
        if rows:
            r_top, r_bottom = min(l.box[1] for l in rows[-1]), max(l.box[3] for l in rows[-1])
            if min(bottom, r_bottom) - max(top, r_top) >= 0.5 * max(1, bottom - top):
                rows[-1].append(line)
                continue
        rows.append([line])
    return [sorted(row, key=lambda l: l.box[0]) for row in rows]


def _split_columns(lines: list[OcrLine], depth: int = 0) -> list[list[OcrLine]]:
    """Blocks to read one after another: a page splits at a vertical gap no line crosses when
    both sides have 3+ lines whose rows meet only by chance (a sidebar beside content). Sides
    that share centre lines are a table (label | value) and stay together, as do sides that
    never share a row (chat bubbles alternate down the page)."""
    if depth >= 3 or len(lines) < 6:
        return [lines] if lines else []
    spans = sorted((l.box[0], l.box[2]) for l in lines)
    reach = spans[0][1]
    for x0, x1 in spans[1:]:
        if x0 > reach:  # nothing crosses (reach, x0)
            left = [l for l in lines if l.box[2] <= reach]
            right = [l for l in lines if l.box[0] >= x0]
            if min(len(left), len(right)) >= 3 and _independent(left, right):
                return _split_columns(left, depth + 1) + _split_columns(right, depth + 1)
        reach = max(reach, x1)
    return [lines]


# Sides split when at least this share of the smaller side's lines overlaps a row of the other
# (centres within half a line height), unless TABLE_MIN_ALIGNED of them share a centre line
# (within a tenth). Fixtures: settings 0.62 / 0.0, notes 0.75 / 0.25: split; none is a table.
SIDEBAR_MIN_OVERLAP = 0.25
TABLE_MIN_ALIGNED = 0.6


def _independent(left: list[OcrLine], right: list[OcrLine]) -> bool:
    small, big = sorted((left, right), key=len)

    def shared(tolerance: float) -> float:
        centre = lambda l: (l.box[1] + l.box[3]) / 2
        return sum(
            any(abs(centre(x) - centre(y)) <= tolerance * max(1, x.box[3] - x.box[1]) for y in big) for x in small
        ) / len(small)

    return shared(0.5) >= SIDEBAR_MIN_OVERLAP and shared(0.1) < TABLE_MIN_ALIGNED
