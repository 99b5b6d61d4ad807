"""Small previews of indexed images, kept with the item for result lists (the web page)."""

from __future__ import annotations

import io

from PIL import Image

MAX_SIDE = 128
QUALITY = 70


def thumbnail(image: Image.Image, max_side: int = MAX_SIDE) -> bytes:
    """A JPEG of at most `max_side` pixels a side (a few KB), from decoded RGB pixels."""
    small = image.convert("RGB")
    small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()
