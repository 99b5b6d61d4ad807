"""encoders.image.decode: every bad input is rejected with a reason a human can act on, every
good one decodes to the RGB image a viewer would show."""

from __future__ import annotations

import hashlib
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image, ImageFile

from encoders.common.errors import InvalidInput
from encoders.image import decode as media
from encoders.image.decode import DecodedImage, ImageLimits, decode_image, sniff_format
from tests.fixtures import bad_media as bm

ALLOWED = "JPEG, PNG, WEBP, GIF, BMP, TIFF"


def rejected(data: bytes, limits: ImageLimits = ImageLimits(), **kwargs: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        decode_image(data, limits, **kwargs)
    return info.value


def close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 8) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to decode pixels (and so allocate the image) fails the test."""

    def refuse(self: Image.Image) -> None:
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)


@pytest.fixture
def pil_must_not_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes must be rejected before any PIL plugin parses them."""

    def refuse(data: bytes, fmt: str) -> None:
        raise AssertionError(f"PIL was asked to open the {fmt} file")

    monkeypatch.setattr(media, "_open", refuse)


# --- rejected inputs ----------------------------------------------------------------------


def test_empty_bytes() -> None:
    assert "empty" in rejected(bm.empty_bytes()).reason


def test_random_bytes_name_the_start_and_the_allowed_formats() -> None:
    data = bm.random_bytes()
    reason = rejected(data).reason
    assert "not an image in any recognised format" in reason
    assert data[:4].hex(" ") in reason
    assert ALLOWED in reason


@pytest.mark.parametrize(
    ("make", "fmt"),
    [(bm.truncated_jpeg, "JPEG"), (bm.truncated_png, "PNG"), (bm.corrupt_png, "PNG")],
)
def test_truncated_or_corrupt(make, fmt: str) -> None:
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    reason = rejected(make()).reason
    assert f"the {fmt} data is truncated or corrupt" in reason
    assert "send the complete file" in reason


def test_png_bomb_is_rejected_from_the_header(no_pixel_decoding: None) -> None:
    data = bm.png_bomb()
    assert len(data) < 200_000  # ~100 KB on disk for 100 MB of pixels
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reason = rejected(data).reason
    assert reason == "image is 10000x10000 = 100,000,000 pixels; the limit is 40,000,000 pixels"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_png_bomb_fixture_is_a_real_png() -> None:
    """The same generator at a size under the limits decodes: the bomb is not just a header."""
    decoded = decode_image(bm.png_bomb(2_000, 1_000))
    assert (decoded.width, decoded.height) == (2_000, 1_000)
    assert decoded.image.getextrema() == ((0, 0), (0, 0), (0, 0))


@pytest.mark.parametrize(
    ("fmt", "side", "data"),
    [(fmt, 20_000, bm.huge_dimensions(fmt, 20_000, 20_000)) for fmt in ("PNG", "JPEG", "BMP")],
    ids=["PNG", "JPEG", "BMP"],
)
def test_huge_header_is_rejected_without_decoding(no_pixel_decoding: None, fmt: str, side: int, data: bytes) -> None:
    assert len(data) < 1_000
    start = time.perf_counter()
    reason = rejected(data).reason
    elapsed = time.perf_counter() - start  # observed, not asserted: ~1 ms
    print(f"{fmt} {side}x{side} rejected in {elapsed * 1000:.2f} ms")
    assert reason == f"image is {side}x{side} = {side * side:,} pixels; the limit is 40,000,000 pixels"


@pytest.mark.parametrize(
    ("data", "claim"),
    [
        (bm.huge_dimensions("GIF", 20_000, 20_000), "20000x20000 = 400,000,000"),
        (bm.huge_dimensions("WEBP", 16_000, 16_000), "16000x16000 = 256,000,000"),
        # PIL would allocate ~860 MB for this 43-byte file while merely opening it.
        (bm.gif_frame_extent_bomb(), "30000x30000 = 900,000,000"),
        (bm.gif_frame_extent_bomb(8_000), "8000x8000 = 64,000,000"),
    ],
    ids=["gif-screen", "webp-canvas", "gif-frame-bomb", "gif-frame-under-pil-limit"],
)
def test_formats_that_allocate_on_open_are_checked_before_pil_sees_them(
    pil_must_not_open: None, data: bytes, claim: str
) -> None:
    assert len(data) < 1_000
    assert claim in rejected(data).reason


def test_longest_side() -> None:
    reason = rejected(bm.huge_dimensions("PNG", 13_000, 10)).reason
    assert reason == "image is 13000x10; the longest side allowed is 12,000 pixels"


def test_zero_size_header() -> None:
    reason = rejected(bm.huge_dimensions("GIF", 0, 10)).reason
    assert reason == "image header declares 0x10 pixels; an image needs at least 1x1"
    # PIL's PNG reader refuses a zero size itself, so the reason is less specific
    assert "the PNG data is truncated or corrupt" in rejected(bm.huge_dimensions("PNG", 0, 10)).reason


def test_over_byte_cap() -> None:
    data = bm.over_byte_cap(10_000)
    reason = rejected(data, ImageLimits(max_bytes=10_000)).reason
    assert reason.startswith(f"image is {len(data):,} bytes; the limit is 10,000 bytes;")
    assert decode_image(data).format == "PNG"  # the same bytes pass the default cap


def test_default_byte_cap_is_checked_before_parsing(pil_must_not_open: None) -> None:
    reason = rejected(bytes(20 * 1024 * 1024 + 1)).reason  # zeros: would not even sniff
    assert "20,971,521 bytes; the limit is 20,971,520 bytes (20 MiB)" in reason


@pytest.mark.parametrize(("make", "name"), [(bm.ico_bytes, "ICO"), (bm.pdf_bytes, "PDF"), (bm.svg_bytes, "SVG")])
def test_unsupported_format_names_what_was_found(pil_must_not_open: None, make, name) -> None:
    reason = rejected(make()).reason
    assert f"image format {name} is not accepted" in reason
    assert ALLOWED in reason


def test_allow_list_is_per_call() -> None:
    reason = rejected(bm.rgba_png(), ImageLimits(allowed_formats=("JPEG",))).reason
    assert reason == "image format PNG is not accepted; convert it to one of: JPEG"


def test_field_is_reported() -> None:
    assert rejected(bm.empty_bytes(), field="items[3].data").field == "items[3].data"
    assert rejected(bm.truncated_jpeg()).field == "image"


def test_pil_guard_is_only_a_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Image.open warns above MAX_IMAGE_PIXELS; decode_image skips that check, so a 64-pixel
    PNG decodes silently. WebP's own check inside the plugin still fires (above 2x the cap)
    and comes back as InvalidInput, never as PIL's exception."""
    limits = ImageLimits(max_pixels=100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_image(bm.apng(), limits).width == 8
    reason = rejected(bm.animated_webp(), limits).reason
    assert "more pixels than can be decoded safely" in reason


def test_refuses_to_run_with_truncated_loading_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(bm.truncated_jpeg())


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        ImageLimits(max_side=0)
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        ImageLimits(max_pixels=10**9)
    with pytest.raises(ValueError, match="JPG"):
        ImageLimits(allowed_formats=("JPG",))


# --- decoded inputs ----------------------------------------------------------------------


def test_exif_orientation_swaps_width_and_height() -> None:
    decoded = decode_image(bm.jpeg_exif_orientation_6())
    assert (decoded.width, decoded.height) == (32, 64)  # stored 64x32
    assert decoded.image.size == (32, 64)
    assert close(decoded.image.getpixel((16, 8)), bm.RED)  # stored left -> displayed top
    assert close(decoded.image.getpixel((16, 56)), bm.BLUE)


def test_alpha_is_composited_over_white() -> None:
    decoded = decode_image(bm.rgba_png())
    assert decoded.image.mode == "RGB"
    pixels = [decoded.image.getpixel((x, 0)) for x in range(4)]
    assert pixels[0] == bm.RED
    assert pixels[1] == bm.WHITE  # transparent red is not red
    assert close(pixels[2], (127, 127, 255), tol=1)
    assert pixels[3] == bm.WHITE  # transparent black is not black


def test_palette_transparency_is_white_not_the_palette_colour() -> None:
    image = decode_image(bm.palette_png_with_transparency()).image
    assert image.getpixel((0, 0)) == bm.WHITE
    assert image.getpixel((3, 1)) == bm.BLUE


@pytest.mark.parametrize(("make", "fmt"), [(bm.animated_gif, "GIF"), (bm.animated_webp, "WEBP"), (bm.apng, "PNG")])
def test_animation_decodes_the_first_frame(make, fmt: str) -> None:
    decoded = decode_image(make())
    assert (decoded.format, decoded.n_frames) == (fmt, 2)
    assert decoded.image.mode == "RGB"
    assert decoded.image.getcolors() == [(64, bm.RED)]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (bm.greyscale_png, [(100, 100, 100)] * 4),
        (bm.greyscale_alpha_png, [bm.WHITE, bm.BLACK]),
        (bm.sixteen_bit_png, [(0, 0, 0), (128, 128, 128), (255, 255, 255)]),
        (bm.bilevel_png, [bm.BLACK, bm.WHITE]),
        (bm.float_tiff, [(0, 0, 0), (128, 128, 128), (255, 255, 255)]),
        (bm.bmp_image, [bm.GREEN] * 4),
        (bm.tiff_image, [bm.BLUE] * 4),
    ],
)
def test_modes_convert_to_rgb(make, expected: list[tuple[int, int, int]]) -> None:
    image = decode_image(make()).image
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in range(len(expected))] == expected


def test_cmyk_jpeg() -> None:
    image = decode_image(bm.cmyk_jpeg()).image
    assert image.mode == "RGB"
    assert close(image.getpixel((2, 4)), bm.WHITE)
    assert close(image.getpixel((13, 4)), (0, 255, 255))


def test_result_fields() -> None:
    data = bm.animated_gif()
    decoded = decode_image(data)
    assert isinstance(decoded, DecodedImage)
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert (decoded.format, decoded.width, decoded.height) == ("GIF", 8, 8)
    with pytest.raises(AttributeError):
        decoded.width = 1  # type: ignore[misc]


def test_sha256_is_of_the_original_bytes_not_the_pixels() -> None:
    a, b = bm.greyscale_png(), bm.png_bomb(4, 4)  # different files...
    assert decode_image(a).sha256 != decode_image(b).sha256
    assert decode_image(a).sha256 == hashlib.sha256(a).hexdigest()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (bm.truncated_jpeg, "JPEG"),  # magic bytes only: truncation is not its business
        (bm.rgba_png, "PNG"),
        (bm.animated_gif, "GIF"),
        (bm.animated_webp, "WEBP"),
        (bm.bmp_image, "BMP"),
        (bm.tiff_image, "TIFF"),
        (bm.ico_bytes, "ICO"),
        (bm.pdf_bytes, None),
        (bm.random_bytes, None),
        (bm.empty_bytes, None),
    ],
)
def test_sniff_format(make, expected: str | None) -> None:
    assert sniff_format(make()) == expected


def test_concurrent_decoding_gives_the_same_answers() -> None:
    makers = [
        bm.jpeg_exif_orientation_6,
        bm.rgba_png,
        bm.animated_gif,
        bm.sixteen_bit_png,
        bm.truncated_jpeg,
        bm.png_bomb,
    ]
    inputs = [make() for make in makers] * 8

    def outcome(data: bytes) -> tuple[object, ...]:
        try:
            d = decode_image(data)
            return d.sha256, d.width, d.height, d.image.tobytes()
        except InvalidInput as e:
            return ("rejected", e.reason)

    serial = [outcome(d) for d in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(outcome, inputs)) == serial
