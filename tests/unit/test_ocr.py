"""OCR engines, reading order, look-alike fixes and the screenshot-vs-photo heuristic.

Engine tests read the committed screenshots (tests/fixtures/screenshots, made by
make_screenshots.py) with the default engine, once per module, ~10 s on 2 cores.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from encoders import ocr
from encoders.common.errors import InvalidInput, ModelUnavailable
from encoders.common.metrics import cer
from encoders.ocr import (
    OcrLine,
    OcrOptions,
    create_ocr,
    fix_lookalikes,
    looks_like_text_image,
    reading_order,
    tesseract,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "screenshots"
CASES = json.loads((FIXTURES / "cases.json").read_text())
# Screenshots whose key is an error code (the others' keys are ids: order, ticket, IP address).
ERROR_SHOTS = [
    "win_update_0x80070005.png",
    "app_start_0xc000007b.png",
    "printer_e42_tray_empty.png",
    "terminal_connection_refused.png",
    "browser_dns_nxdomain.png",
    "login_auth_1007.png",
    "bsod_critical_process_died.png",
    "ci_build_ts2304_dark.png",
]
# The default engine measured 0.000-0.048 on these (benchmarks/bench_ocr.py); bounds leave room.
MAX_CER_PER_IMAGE = 0.08
MAX_CER_MEAN = 0.025

needs_default = pytest.mark.skipif(
    ocr.DEFAULT_ENGINE not in ocr.available_engines(), reason=ocr.ENGINES[ocr.DEFAULT_ENGINE].install
)


def shot(name: str) -> Image.Image:
    with Image.open(FIXTURES / name) as im:
        return im.convert("RGB")


@pytest.fixture(scope="module")
def engine():
    return create_ocr().load()


@pytest.fixture(scope="module")
def results(engine):
    return {name: engine.read(shot(name)) for name in ERROR_SHOTS}


# --- the default engine on the screenshots -------------------------------------------------
@needs_default
@pytest.mark.parametrize("name", ERROR_SHOTS)
def test_reads_error_code_exactly(results, name):
    key = CASES[name]["key"]
    assert key in results[name].text, f"{key!r} not in {results[name].text!r}"


@needs_default
def test_character_error_rate(results):
    rates = {name: cer(CASES[name]["text"], r.text) for name, r in results.items()}
    assert max(rates.values()) <= MAX_CER_PER_IMAGE, rates
    assert sum(rates.values()) / len(rates) <= MAX_CER_MEAN, rates


@needs_default
def test_result_shape_and_reading_order(results):
    r = results["win_update_0x80070005.png"]
    assert r.engine == ocr.DEFAULT_ENGINE and r.seconds > 0
    # Reading order exactly; characters within a small CER (ONNX Runtime's AVX2 and AVX-512
    # kernels round differently, which can flip a low-confidence character).
    want = [
        "Windows Update",
        "Some updates failed to install",
        "There were problems installing some updates, but we'll try again later.",
    ]
    got = r.text.splitlines()[:3]
    assert len(got) == 3 and all(cer(w, g) <= 0.05 for w, g in zip(want, got)), got
    assert all(0.5 <= line.confidence <= 1.0 for line in r.lines)
    w, h = shot("win_update_0x80070005.png").size
    assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in (l.box for l in r.lines))
    assert r.text.replace("\n", " ") == " ".join(l.text for l in r.lines)


@needs_default
def test_sidebar_is_read_before_the_content(engine):
    text = engine.read(shot("settings_wifi_ip.png")).text
    assert text.index("Accounts") < text.index("Properties") < text.index("IPv4 address: 192.168.1.42")


@needs_default
def test_blank_image_gives_empty_text(engine):
    r = engine.read(Image.new("RGB", (640, 400), "white"))
    assert r.text == "" and r.lines == ()
    assert engine.read(Image.new("L", (1, 1))).text == ""  # any mode, any size


@needs_default
def test_downscaled_read_reports_boxes_in_original_pixels():
    font = _dejavu(64)
    im = Image.new("RGB", (2400, 600), "white")
    ImageDraw.Draw(im).text((1200, 300), "E-42 Paper tray empty", fill="black", font=font)
    r = create_ocr(options=OcrOptions(max_side=1200)).read(im)
    assert "E-42" in r.text
    x0, y0, x1, _ = r.lines[0].box
    assert 1150 < x0 < 1250 and 280 < y0 < 340 and x1 > 1800


def _dejavu(size: int):
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"):
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


@pytest.mark.skipif("tesseract" not in ocr.available_engines(), reason=ocr.ENGINES["tesseract"].install)
def test_tesseract_reads_an_error_code():
    try:
        engine = create_ocr("tesseract")
    except ModelUnavailable as exc:
        pytest.skip(exc.reason)
    r = engine.read(shot("browser_dns_nxdomain.png"))
    assert r.engine == "tesseract" and "DNS_PROBE_FINISHED_NXDOMAIN" in r.text


# --- registry and options ------------------------------------------------------------------
def test_unknown_engine_lists_valid_ones():
    with pytest.raises(InvalidInput) as info:
        create_ocr("paddle")
    assert info.value.field == "engine"
    assert "rapidocr" in info.value.reason and "tesseract" in info.value.reason


def test_missing_engine_says_how_to_install(monkeypatch):
    monkeypatch.setitem(
        ocr.ENGINES,
        "rapidocr",
        ocr.EngineSpec("RapidOcrEngine", ("no_such_module_xyz",), "pip install rapidocr-onnxruntime==1.4.4"),
    )
    with pytest.raises(ModelUnavailable, match=r"pip install rapidocr-onnxruntime==1\.4\.4"):
        create_ocr("rapidocr")


def test_missing_traineddata_says_how_to_install(monkeypatch, tmp_path):
    if "tesseract" not in ocr.available_engines():
        pytest.skip(ocr.ENGINES["tesseract"].install)
    monkeypatch.setattr(tesseract, "TESSDATA_DIRS", (str(tmp_path),))
    monkeypatch.delenv("TESSDATA_PREFIX", raising=False)
    with pytest.raises(ModelUnavailable, match="apt-get install tesseract-ocr-deu"):
        create_ocr("tesseract", OcrOptions(languages=("de",)))


def test_options_are_validated():
    for bad in ({"threads": 0}, {"min_confidence": 1.5}, {"max_side": 10}, {"languages": ()}):
        with pytest.raises(InvalidInput):
            OcrOptions(**bad)
    assert OcrOptions(languages=(" EN ",)).languages == ("en",)
    if ocr.DEFAULT_ENGINE in ocr.available_engines():
        with pytest.raises(InvalidInput, match="languages|reads"):
            create_ocr("rapidocr", OcrOptions(languages=("de",)))


# --- reading order (no model) --------------------------------------------------------------
def line(text, x0, y0, x1, y1):
    return OcrLine(text, 0.9, (x0, y0, x1, y1))


def test_rows_top_to_bottom_left_to_right():
    lines = [line("world", 120, 12, 200, 30), line("second row", 10, 50, 150, 70), line("hello", 10, 10, 100, 32)]
    ordered, text = reading_order(lines)
    assert text == "hello world\nsecond row"
    assert [l.text for l in ordered] == ["hello", "world", "second row"]
    assert reading_order([]) == ([], "")


def test_sidebar_split_but_tables_and_chats_kept_in_rows():
    nav = [line(f"nav{i}", 10, 40 + 36 * i, 120, 60 + 36 * i) for i in range(6)]
    content = [line(f"body{i}", 300, 45 + 29 * i, 700, 65 + 29 * i) for i in range(8)]
    assert reading_order(nav + content)[1].split("\n") == [f"nav{i}" for i in range(6)] + [f"body{i}" for i in range(8)]
    table = [line(f"item{i}", 10, 30 * i, 200, 30 * i + 20) for i in range(5)]
    table += [line(f"{i}.99", 400, 30 * i, 450, 30 * i + 20) for i in range(5)]
    assert reading_order(table)[1].split("\n") == [f"item{i} {i}.99" for i in range(5)]
    chat = [
        line("left1", 10, 0, 300, 20),
        line("left2", 10, 25, 300, 45),
        line("right1", 500, 60, 900, 80),
        line("right2", 500, 85, 900, 105),
        line("left3", 10, 120, 300, 140),
        line("right3", 500, 160, 900, 180),
    ]
    assert reading_order(chat)[1].split("\n") == ["left1", "left2", "right1", "right2", "left3", "right3"]


# --- look-alike fixes ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, fixed",
    [
        ("(Oxcooooo7b).", "(0xc000007b)."),
        ("[Errno 1il]", "[Errno 111]"),
        ("python3.1l/socket.py", "python3.11/socket.py"),
        ("INF0 starting", "INFO starting"),
        ("net::ERR_CONNECTI0N_RESET", "net::ERR_CONNECTION_RESET"),
        ("0rder #GV-20250314-0917", "Order #GV-20250314-0917"),
        ("error Ts2304:", "error TS2304:"),
    ],
)
def test_lookalikes_fixed(raw, fixed):
    assert fix_lookalikes(raw) == fixed


@pytest.mark.parametrize(
    "text",
    [
        "0x80070005",
        "Oxford",
        "0xff",
        "0px",
        "TS2304",
        "A4-5E-60-C2-19-7B",
        "1st",
        "E-42",
        "10.0.3.7:5672",
        "Old",
        "IPv4",
        "$24.53",
        "WPA3-Personal",
        "Ts23",
        "Ab2304",
    ],
)
def test_lookalikes_leave_real_text_alone(text):
    assert fix_lookalikes(text) == text


# --- screenshot or photo -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_screenshots_look_like_text(name):
    im = shot(name)
    assert looks_like_text_image(im)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=70)
    assert looks_like_text_image(Image.open(buf))
    assert looks_like_text_image(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS))


def _pink_noise(seed: int, h: int = 480, w: int = 640) -> Image.Image:
    """1/f colour noise: the spectrum of natural photos, without shipping one."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    channels = []
    for _ in range(3):
        x = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((h, w))) / np.maximum(np.hypot(fx, fy), 1 / w)))
        channels.append((x - x.min()) / (x.max() - x.min()))
    return Image.fromarray((np.stack(channels, -1) * 255).astype(np.uint8))


def test_generated_photos_and_blanks_do_not_look_like_text():
    assert not any(looks_like_text_image(_pink_noise(seed)) for seed in range(3))
    assert not looks_like_text_image(Image.new("RGB", (800, 600), "white"))  # flat, but no edges
    assert not looks_like_text_image(Image.new("RGB", (20, 400), "white"))  # too small to hold text


def test_real_photos_do_not_look_like_text():
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the sample photos")
    photos = {
        n: getattr(data, n)()
        for n in (
            "astronaut",
            "camera",
            "chelsea",
            "coffee",
            "coins",
            "rocket",
            "brick",
            "grass",
            "gravel",
            "moon",
            "cell",
        )
    }
    flagged = [n for n, a in photos.items() if looks_like_text_image(Image.fromarray(a))]
    assert not flagged
