"""A deterministic synthetic world of coloured shapes, used to train and test the bundled tiny CLIP.

Captions read "a {colour} {shape} on a {colour} background". The world is small (8 colours x
6 shapes x 7 backgrounds = 336 captions) so a model trained for minutes on two CPU cores can
learn it, and every fact in a caption is visible at 64 px.

Pure PIL + numpy and seeded `random.Random` only: tests can regenerate the exact same
images without torch, and layouts never depend on the global random state.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import product

from PIL import Image, ImageDraw

# Picked to stay far apart in RGB and in hue, so a 64 px render never leaves the caption
# ambiguous (orange vs red vs yellow and purple vs blue are the closest pairs).
_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 225, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}
COLOURS: tuple[str, ...] = tuple(_RGB)
# Silhouettes that stay distinct after downscaling to 64 px (no ellipse vs circle, no
# pentagon vs hexagon); the ring's hole is at least ~8 px across at the smallest size.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")

# Draw this many times larger, then downsample: antialiased edges make a 64 px render look
# like a 224 px render resized to 64, which is what the model's preprocessing feeds it.
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.colour not in _RGB or self.background not in _RGB:
            raise ValueError(f"unknown shape or colour in {self!r}")
        if self.colour == self.background:
            raise ValueError(f"a shape must differ from its background: {self!r}")

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def all_scenes() -> list[Scene]:
    """Every valid scene, in a fixed order."""
    return [Scene(s, c, b) for s, c, b in product(SHAPES, COLOURS, COLOURS) if c != b]


def sample_scenes(n: int, seed: int, distinct: bool = False) -> list[Scene]:
    """`n` scenes drawn uniformly; with `distinct`, `n` different captions (n <= 336)."""
    rng = random.Random(seed)
    scenes = all_scenes()
    if distinct:
        if n > len(scenes):
            raise ValueError(f"only {len(scenes)} distinct scenes exist, asked for {n}")
        return rng.sample(scenes, n)
    return [rng.choice(scenes) for _ in range(n)]


def _polygon(shape: str, r: float) -> list[tuple[float, float]]:
    """Vertices around the origin for the polygonal shapes, sized to look about as big as a circle of radius r."""
    if shape == "square":
        h = 0.82 * r
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        # Equilateral, point up, centred on its centroid.
        R = 1.15 * r
        return [(R * math.cos(a), R * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = 1.1 * r if i % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        return pts
    if shape == "cross":
        L, w = r, 0.32 * r
        return [
            (-w, -L),
            (w, -L),
            (w, -w),
            (L, -w),
            (L, w),
            (w, w),
            (w, L),
            (-w, L),
            (-w, w),
            (-L, w),
            (-L, -w),
            (-w, -w),
        ]
    raise ValueError(shape)


def render(scene: Scene, rng: random.Random, size: int = 64) -> Image.Image:
    """Draw `scene` as an RGB `size` x `size` image.

    All random draws are fractions of the canvas, made in a fixed order, so the same rng
    state gives the same picture at any size.
    """
    r = rng.uniform(0.20, 0.32)  # radius as a fraction of the side
    margin = r + 0.05
    cx = rng.uniform(margin, 1 - margin)
    cy = rng.uniform(margin, 1 - margin)
    angle = math.radians(rng.uniform(-20.0, 20.0))

    big = size * _SUPERSAMPLE
    fg, bg = _RGB[scene.colour], _RGB[scene.background]
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    R, X, Y = r * big, cx * big, cy * big
    if scene.shape in ("circle", "ring"):
        draw.ellipse((X - R, Y - R, X + R, Y + R), fill=fg)
        if scene.shape == "ring":
            h = 0.55 * R
            draw.ellipse((X - h, Y - h, X + h, Y + h), fill=bg)
    else:
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(X + x * ca - y * sa, Y + x * sa + y * ca) for x, y in _polygon(scene.shape, R)]
        draw.polygon(pts, fill=fg)
    # BOX is an exact area average for an integer factor: cheap and free of ringing.
    return img.resize((size, size), Image.Resampling.BOX)


def make_pairs(n: int, seed: int, size: int = 64, distinct: bool = False) -> list[tuple[Image.Image, str]]:
    """`n` (image, caption) pairs; the scenes are `sample_scenes(n, seed, distinct)`."""
    scenes = sample_scenes(n, seed, distinct)
    # A separate stream for layouts, so the scene list matches sample_scenes exactly.
    rng = random.Random(f"shapes-layout:{seed}")
    return [(render(s, rng, size), s.caption) for s in scenes]
