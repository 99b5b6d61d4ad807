"""Shipped out-of-domain queries: what calibration uses as "should match nothing".

`out_of_domain_texts()` are generic photo, document and support questions
(`calibration_data/out_of_domain.txt`); `out_of_domain_images(n)` draws images that show no
object at all: pixel noise, smooth colour clouds, gradients, stripes, checkerboards and
rendered lines of text. Both are deterministic (seeded), so a calibration is repeatable.
A collection whose items look like these (a catalog of fabric patterns, scanned forms) should
be calibrated with labelled cases instead, which `loupe calibrate --cases` takes.
"""

from __future__ import annotations

import io
import random
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TEXTS = Path(__file__).with_name("calibration_data") / "out_of_domain.txt"
SIZE = 128
_WORDS = ("INVOICE", "TOTAL", "Page", "Report", "2023", "Q3", "Menu", "Ticket", "No.", "Terms", "Date", "EUR")


@cache
def out_of_domain_texts() -> tuple[str, ...]:
    lines = TEXTS.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def out_of_domain_images(n: int, seed: int = 0) -> list[bytes]:
    """`n` PNG images, cycling through the kinds, each drawn from its own seeded state."""
    makers = (_noise, _clouds, _gradient, _stripes, _checkerboard, _text)
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        img = makers[i % len(makers)](rng)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _noise(rng: random.Random) -> Image.Image:
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _clouds(rng: random.Random) -> Image.Image:
    cells = rng.choice((4, 6, 8))
    small = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)


def _gradient(rng: random.Random) -> Image.Image:
    a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
    t = np.linspace(0, 1, SIZE)[:, None, None]
    rows = (a * (1 - t) + b * t).astype(np.uint8)
    img = Image.fromarray(np.repeat(rows, SIZE, axis=1), "RGB")
    return img.rotate(rng.choice((0, 45, 90, 135)), resample=Image.Resampling.BILINEAR, expand=False)


def _stripes(rng: random.Random) -> Image.Image:
    width = rng.choice((4, 8, 12, 16))
    a, b = _colour(rng), _colour(rng)
    img = Image.new("RGB", (SIZE, SIZE), a)
    draw = ImageDraw.Draw(img)
    for x in range(0, SIZE, 2 * width):
        draw.rectangle((x, 0, x + width - 1, SIZE), fill=b)
    return img.rotate(rng.choice((0, 30, 90)), resample=Image.Resampling.BILINEAR)


def _checkerboard(rng: random.Random) -> Image.Image:
    cell = rng.choice((8, 16, 32))
    a, b = _colour(rng), _colour(rng)
    img = Image.new("RGB", (SIZE, SIZE), a)
    draw = ImageDraw.Draw(img)
    for y in range(0, SIZE, cell):
        for x in range((y // cell) % 2 * cell, SIZE, 2 * cell):
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=b)
    return img


def _text(rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    for y in range(6, SIZE - 10, 14):
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 4)))
        draw.text((6, y), line, fill=(20, 20, 20))
    return img
