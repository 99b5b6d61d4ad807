"""The one place that touches untrusted image bytes.

`decode_image` turns client bytes into an RGB PIL image, or raises `InvalidInput` with a
reason a human can act on. Order of checks, cheapest first: empty, byte cap, format sniffed
from magic bytes against the allow-list, dimensions from the header (nothing decoded yet),
then the pixels of the first frame, then EXIF orientation and conversion to RGB.

PIL's bomb guard (`Image.MAX_IMAGE_PIXELS`) stays at its default and is never the mechanism.
It is global, so it cannot follow per-call limits; and it cannot be switched off: with it set
to None a 43-byte GIF (first frame 30000x30000, disposal 2) makes `Image.open` allocate
~860 MB, and opening a WebP allocates its canvas. So we call the plugin factory directly,
skipping the check `Image.open` runs after the header (ours runs instead); we read GIF and WebP
sizes from the raw bytes before PIL opens them; and `ImageLimits` refuses a `max_pixels` above
PIL's, which leaves PIL's guard as a backstop for files ours already rejects.
Nothing here changes global state per call, so `decode_image` is thread-safe.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

from encoders.common.errors import InvalidInput

Image.init()  # Register every plugin once, at import, so sniffing sees all formats.

# Formats PIL cannot read, named so the client hears what it sent rather than "unknown".
_OTHER_SIGNATURES = ((b"%PDF", "PDF"), (b"<svg", "SVG"), (b"<?xml", "SVG or other XML"))
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"mif1", b"msf1")


@dataclass(frozen=True)
class ImageLimits:
    # Largest upload accepted, in bytes; checked before any parsing.
    max_bytes: int = 20 * 1024 * 1024
    # Largest width*height accepted, read from the header before any pixel is decoded.
    # 40 MP is a 7300x5500 photo; decoded to RGB that is 120 MB.
    max_pixels: int = 40_000_000
    # Longest side accepted; stops 12000x3 strips that pass the pixel limit.
    max_side: int = 12_000
    # PIL format names (as sniffed from the bytes, never the caller's file name) accepted.
    allowed_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_side) < 1:
            raise ValueError(f"image limits must be positive: {self}")
        pil_cap = Image.MAX_IMAGE_PIXELS
        if pil_cap is not None and self.max_pixels > pil_cap:
            raise ValueError(
                f"max_pixels={self.max_pixels:,} is above PIL's Image.MAX_IMAGE_PIXELS="
                f"{pil_cap:,}, so PIL's bomb guard would reject images first; raise both together"
            )
        unknown = [f for f in self.allowed_formats if f not in Image.OPEN]
        if unknown:
            raise ValueError(f"allowed_formats has names PIL cannot open: {unknown}")


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # mode RGB, EXIF orientation applied, alpha composited over white
    format: str  # PIL format name sniffed from the bytes, e.g. "JPEG" (MPO reports "JPEG")
    width: int  # after orientation
    height: int  # after orientation
    sha256: str  # hex digest of the original bytes
    n_frames: int  # frames in the file; only the first is decoded


def sniff_format(data: bytes) -> str | None:
    """PIL's format name for `data` from its magic bytes alone, or None. Parses nothing."""
    prefix = bytes(data[:16])
    for name in Image.ID:
        _factory, accept = Image.OPEN[name]
        try:
            if accept is not None and accept(prefix):  # a str: known, plugin not built
                return name
        except (IndexError, TypeError, struct.error):  # short prefix; Image.open does the same
            continue
    return None


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), *, field: str = "image") -> DecodedImage:
    """Validate and decode untrusted image bytes, or raise `InvalidInput` saying why not."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True somewhere in this process; "
            "decode_image refuses to run because truncated uploads would be accepted silently"
        )
    _check_byte_size(data, limits, field)
    fmt = _check_format(data, limits, field)
    declared = _declared_size(data, fmt)
    if declared is not None:
        _check_dimensions(declared, limits, field)
    with _pil_errors(fmt, limits, field):
        im = _open(data, fmt)
        _check_dimensions(im.size, limits, field)  # header only; no pixels yet
        n_frames = getattr(im, "n_frames", 1)  # walks frame headers, decodes nothing
        im.seek(0)
        _check_dimensions(im.size, limits, field)  # frame 0 may differ (TIFF pages)
        im.load()
        rgb = _to_rgb(_oriented(im), field)
    digest = hashlib.sha256(data).hexdigest()
    return DecodedImage(rgb, fmt, rgb.width, rgb.height, digest, n_frames)


def _check_byte_size(data: bytes, limits: ImageLimits, field: str) -> None:
    if len(data) == 0:
        raise InvalidInput("image is empty (0 bytes); send the file's contents", field=field)
    if len(data) > limits.max_bytes:
        raise InvalidInput(
            f"image is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes"
            f"{_in_mib(limits.max_bytes)}; downscale or recompress it",
            field=field,
        )


def _in_mib(n: int) -> str:
    return f" ({n / 2**20:.4g} MiB)" if n >= 2**20 else ""


def _check_format(data: bytes, limits: ImageLimits, field: str) -> str:
    allowed = ", ".join(limits.allowed_formats)
    fmt = sniff_format(data) or _other_format(data)
    if fmt is None:
        raise InvalidInput(
            f"bytes are not an image in any recognised format (they start with "
            f"{bytes(data[:8]).hex(' ')}); send one of: {allowed}",
            field=field,
        )
    if fmt not in limits.allowed_formats:
        raise InvalidInput(f"image format {fmt} is not accepted; convert it to one of: {allowed}", field=field)
    return fmt


def _other_format(data: bytes) -> str | None:
    head = bytes(data[:64]).lstrip()
    for magic, name in _OTHER_SIGNATURES:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF/HEIC"
    return None


def _check_dimensions(size: tuple[int, int], limits: ImageLimits, field: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InvalidInput(
            f"image header declares {width}x{height} pixels; an image needs at least 1x1",
            field=field,
        )
    if width * height > limits.max_pixels:
        raise InvalidInput(
            f"image is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,} pixels",
            field=field,
        )
    if max(width, height) > limits.max_side:
        raise InvalidInput(
            f"image is {width}x{height}; the longest side allowed is {limits.max_side:,} pixels",
            field=field,
        )


def _declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Size read from the raw bytes, for the formats whose PIL plugin allocates on open."""
    try:
        if fmt == "WEBP":
            return _webp_canvas_size(data)
        if fmt == "GIF":
            return _gif_first_frame_size(data)
    except (IndexError, struct.error):
        pass  # too short to say; PIL will report it as truncated
    return None


def _webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30:  # same rule as PIL's reader
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1, height-1
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width-1, height-1
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


def _gif_first_frame_size(data: bytes) -> tuple[int, int]:
    """Logical screen grown to cover the first frame, as PIL does (and allocates) on open.
    Walks the blocks exactly as `GifImageFile._seek` does, quirks included, so a crafted
    file cannot show us one frame size and PIL another."""
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while pos < len(data) and data[pos] != 0x3B:  # 0x3B: trailer
        tag, pos = data[pos], pos + 1
        if tag == 0x2C:  # image descriptor: left, top, width, height
            left, top, frame_w, frame_h = struct.unpack_from("<HHHH", data, pos)
            return max(width, left + frame_w), max(height, top + frame_h)
        if tag == 0x21:
            pos = _skip_gif_extension(data, pos)
        # PIL skips any other byte, one at a time
    return width, height


def _skip_gif_extension(data: bytes, pos: int) -> int:
    """Mirror of the extension branch of `GifImageFile._seek`; returns where it stops."""
    label, start = data[pos], pos + 1
    more, pos = _gif_sub_block(data, start)
    if label == 0xFE:  # comment: sub-blocks until an empty one
        while more:
            more, pos = _gif_sub_block(data, pos)
        return pos
    if label == 0xFF and more and data[start + 1 : pos].startswith(b"NETSCAPE2.0"):
        _more, pos = _gif_sub_block(data, pos)  # the loop-count block
    more = True
    while more:  # PIL reads on even when the first sub-block was already the terminator
        more, pos = _gif_sub_block(data, pos)
    return pos


def _gif_sub_block(data: bytes, pos: int) -> tuple[bool, int]:
    """Mirror of `GifImageFile.data()`: (block had content, position after it)."""
    size = data[pos] if pos < len(data) else 0
    return size > 0, pos + 1 + size


def _open(data: bytes, fmt: str) -> ImageFile.ImageFile:
    # Image.open would run PIL's bomb check (warning or error) before ours; the factory
    # parses the header only. The format is the one we sniffed, so no other plugin runs.
    factory, _accept = Image.OPEN[fmt]
    im = factory(io.BytesIO(data), "")
    assert isinstance(im, ImageFile.ImageFile)
    return im


@contextmanager
def _pil_errors(fmt: str, limits: ImageLimits, field: str) -> Iterator[None]:
    """Any failure while PIL parses untrusted bytes is the bytes' fault: report it as such."""
    try:
        yield
    except (InvalidInput, MemoryError):
        raise
    except Image.DecompressionBombError as e:  # backstop only; see the module docstring
        raise InvalidInput(
            f"the {fmt} file declares more pixels than can be decoded safely ({e}); "
            f"the limit is {limits.max_pixels:,} pixels",
            field=field,
        ) from e
    except Exception as e:
        raise InvalidInput(
            f"the {fmt} data is truncated or corrupt and could not be decoded "
            f"({type(e).__name__}: {e}); re-export the image and send the complete file",
            field=field,
        ) from e


def _oriented(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation. Unreadable EXIF is metadata damage, not a bad image:
    viewers show such files unrotated, and so do we."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:
        pass
    return im


def _to_rgb(im: Image.Image, field: str) -> Image.Image:
    if im.mode.startswith(("I", "F")):  # 16/32-bit grey: PIL's convert clips, we scale
        im = _high_depth_to_l(im)
    if im.mode == "P":
        transparent = "transparency" in im.info or (im.palette and im.palette.mode == "RGBA")
        im = im.convert("RGBA" if transparent else "RGB")
    elif im.mode in ("LA", "La", "PA", "RGBa") or (im.mode in ("1", "L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        return _over_white(im)
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise InvalidInput(
            f"image colour mode {im.mode} cannot be converted to RGB ({e}); re-export it as 8-bit RGB",
            field=field,
        ) from e


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    pixels = np.asarray(im).astype(np.float32)  # exact for 16-bit values
    if im.mode == "F":  # float: [0, 1] is the common convention; otherwise clip to [0, 255]
        scale = 255.0 if pixels.size and 0.0 <= pixels.min() and pixels.max() <= 1.0 else 1.0
        pixels = pixels * scale
    elif im.mode.startswith("I;16") or pixels.max(initial=0) > 255:  # 16-bit range
        pixels = np.clip(pixels, 0, 65535) / 257.0
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _over_white(im: Image.Image) -> Image.Image:
    background = Image.new("RGB", im.size, (255, 255, 255))
    background.paste(im, mask=im.getchannel("A"))
    return background
