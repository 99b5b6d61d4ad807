"""Is an image a screenshot or document (worth OCR), without a model."""

from __future__ import annotations

import numpy as np
from PIL import Image

# looks_like_text_image: share of pixels (after downscaling to TEXT_IMAGE_SIDE) whose gray level
# differs from the right and lower neighbours by at most 1, and share with a step of 64+.
TEXT_IMAGE_SIDE = 640
MIN_FLAT_SHARE = 0.75
MIN_EDGE_SHARE = 0.005


def looks_like_text_image(image: Image.Image) -> bool:
    """True when `image` is probably a screenshot or rendered document (no model, ~5 ms).

    UIs and rendered pages are mostly flat colour (or gradients of at most one level per pixel)
    cut by sharp glyph edges; photos have texture and noise almost everywhere. Flat share on
    the fixtures 0.91-0.96 (0.81-0.95 after JPEG q70 or halving), on scikit-image's photos
    0.01-0.61; flat frames without sharp edges (microscopy, blanks) fail the edge share. Noisy
    scans and photographed documents read as photos."""
    if min(image.size) < 32:
        return False
    gray = image.convert("L")
    if max(gray.size) > TEXT_IMAGE_SIDE:
        scale = TEXT_IMAGE_SIDE / max(gray.size)
        gray = gray.resize(
            (max(1, round(gray.width * scale)), max(1, round(gray.height * scale))), Image.Resampling.BOX
        )
    g = np.asarray(gray, dtype=np.int16)
    step = np.maximum(np.abs(np.diff(g, axis=1))[:-1, :], np.abs(np.diff(g, axis=0))[:, :-1])
    return bool((step <= 1).mean() >= MIN_FLAT_SHARE and (step >= 64).mean() >= MIN_EDGE_SHARE)
