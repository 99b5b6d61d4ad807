"""Calibration and the retrieval eval on the bundled model's shapes fixtures, in process.

    python -m benchmarks.bench_calibration          # ~1 min on 2 cores

Indexes tests/fixtures/shapes_eval's catalog (120 images with caption metadata, 120 caption
texts), calibrates it (timed), and prints:
- the held-out report of the fit (no-match rates per mode, reliability per confidence bin);
- no-match rates on queries the fit never saw: every caption against its modality, the
  fixture's 15 generic queries, 60 new out-of-domain images, 60 of the catalog's images;
- the retrieval eval table of the committed cases in every mode, with search latency.
Writes benchmarks/results/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from indexing.evals import format_table
from indexing.negatives import out_of_domain_images
from services.config import load_settings
from services.serve.workers import EncoderWorker
from tests.fixtures import shapes_eval
from tests.fixtures.inprocess import ApiClient

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("dense", "keyword", "hybrid")


def no_match_rates(client: ApiClient) -> dict[str, dict[str, float]]:
    c = shapes_eval.COLLECTION
    captions = [it["text"] for it in shapes_eval.catalog() if it["modality"] == "text"]
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        modality = "text" if mode == "keyword" else "image"  # images carry no text to match
        inside = [client.search_text(q, collection=c, mode=mode, modalities=[modality]) for q in captions]
        outside = [client.search_text(q, collection=c, mode=mode) for q in shapes_eval.OUT_OF_DOMAIN]
        out[f"text {mode}"] = {
            "in_domain": sum(r.no_match for r in inside) / len(inside),
            "out_of_domain": sum(r.no_match for r in outside) / len(outside),
            "in_domain_queries": len(inside),
            "out_of_domain_queries": len(outside),
        }
    noise = out_of_domain_images(60, seed=2024)
    shapes = [it["data"] for it in shapes_eval.catalog() if it["modality"] == "image"][:60]
    out["image dense"] = {
        "in_domain": sum(client.search_image(b, collection=c).no_match for b in shapes) / len(shapes),
        "out_of_domain": sum(client.search_image(b, collection=c).no_match for b in noise) / len(noise),
        "in_domain_queries": len(shapes),
        "out_of_domain_queries": len(noise),
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "calibration.json"))
    args = p.parse_args()
    encoder = EncoderWorker(load_settings({"profile": "bundled", "encoder": {"threads": args.threads}}))
    with tempfile.TemporaryDirectory() as folder, ApiClient.open(folder, encoder) as client:
        shapes_eval.index_catalog(client)
        start = time.perf_counter()
        fit = client.calibrate(collection=shapes_eval.COLLECTION)
        seconds = time.perf_counter() - start
        report = json.loads(fit.report_json)
        rates = no_match_rates(client)
        evaluation, figures = shapes_eval.evaluate(client)
    print(f"calibrate: {seconds:.1f} s, {fit.positives} positives, {fit.negatives} negatives; {fit.summary}")
    print("probes: " + ", ".join(f"{n} {k}" for k, n in report["probes"].items()))
    print("\nheld-out (probes the fit did not see), no match at confidence 0.5:")
    for mode, r in report["held_out"]["no_match"].items():
        print(
            f"  {mode:12} in-domain {r['in_domain']:6.1%}  out-of-domain {r['out_of_domain']:6.1%}  probes {r['probes']}"
        )
    print("\nheld-out reliability: bin, examples, mean confidence, observed share relevant (class-balanced)")
    for b in report["held_out"]["reliability"]:
        print(f"  {b['bin']}  n={b['n']:4d}  {b['mean_confidence']:.3f}  {b['observed']:.3f}")
    print("\nnew queries, no match at confidence 0.5:")
    for mode, r in rates.items():
        print(
            f"  {mode:14} in-domain {r['in_domain']:6.1%} of {r['in_domain_queries']}, "
            f"out-of-domain {r['out_of_domain']:6.1%} of {r['out_of_domain_queries']}"
        )
    print("\nretrieval eval, committed cases (tests/fixtures/evals/shapes_cases.jsonl):")
    print(format_table(evaluation))
    RESULTS.mkdir(exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "calibrate_s": seconds,
                "fit": report,
                "no_match_new_queries": rates,
                "eval": evaluation.to_json()["groups"],
                "gated": figures,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
