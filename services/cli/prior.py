"""Make a model's calibration prior: what its scores mean before any collection is calibrated.

    python -m services.cli.prior                                  # the bundled model, shipped prior
    python -m services.cli.prior --model ViT-B-32/path.bin --pairs pairs.jsonl --out prior.json

A reference collection is built in a temporary folder from pairs (a picture and its caption;
for the bundled model, shape scenes the model was not trained on), indexed as pictures with
caption metadata plus the captions as text items, then probed exactly as `loupe calibrate`
probes a collection (`indexing.probes.collect`). The prior keeps each map's positive
scores and maps fitted on them. Serve it with `calibration.prior_files: [prior.json]`; the
package's own priors live in `indexing/calibration_data/priors/`.

`pairs.jsonl`: one {"image": "path/to/file.jpg", "caption": "what it shows"} per line, paths
relative to the file; a few hundred pairs of the kind of pictures the model will serve.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
from collections import defaultdict
from pathlib import Path

from indexing.calibration import PRIORS_DIR, Prior
from indexing.fitting import fit_maps
from indexing.negatives import out_of_domain_images, out_of_domain_texts
from indexing.probes import collect, probe_specs, sample_payloads
from protos.loupe.v1 import index_pb2
from services.config import load_settings
from services.rpc.api import LoupeApi
from services.serve.workers import EncoderWorker, IndexWorker, ThreadCalls

COLLECTION = "prior-reference"
# Held out from training (>= 1_000_000) and from the evals' seeds.
BUNDLED_SEED = 4_2424
BUNDLED_PAIRS = 200


def bundled_pairs(n: int = BUNDLED_PAIRS) -> list[tuple[bytes, str]]:
    from encoders.clip.bundled.shapes import make_pairs

    out = []
    for image, caption in make_pairs(n, seed=BUNDLED_SEED, size=64, distinct=True):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append((buf.getvalue(), caption))
    return out


def file_pairs(path: Path) -> list[tuple[bytes, str]]:
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not row.get("image") or not row.get("caption"):
            raise SystemExit(f'{path}:{n}: each line is {{"image": path, "caption": text}}')
        pairs.append(((path.parent / row["image"]).read_bytes(), str(row["caption"])))
    return pairs


def make_prior(model: str, pairs: list[tuple[bytes, str]], source: str, threads: int = 2) -> Prior:
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(
            {
                "profile": "bundled",
                "data_dir": folder,
                "optimize_after_points": 0,
                "encoder": {"model": model, "threads": threads},
            }
        )
        encoder, index = EncoderWorker(settings), IndexWorker(settings)
        try:
            api = LoupeApi(settings, ThreadCalls(encoder), ThreadCalls(index))
            return asyncio.run(_make(api, index, pairs, source))
        finally:
            index.close()


async def _make(api: LoupeApi, worker: IndexWorker, pairs: list[tuple[bytes, str]], source: str) -> Prior:
    for start in range(0, len(pairs), 32):
        images = index_pb2.IndexImagesRequest(collection=COLLECTION)
        texts = index_pb2.IndexTextsRequest(collection=COLLECTION)
        for n, (data, caption) in enumerate(pairs[start : start + 32], start):
            images.items.add(data=data, id=f"pic-{n}").metadata.update({"caption": caption})
            texts.items.add(text=caption, id=f"cap-{n}")
        await api.index_images(images)
        await api.index_texts(texts)
    info = await api.info()
    schema = worker.index.schema_for(COLLECTION, info.schema())
    pool = sample_payloads(worker.index, COLLECTION, len(pairs) * 2)
    specs = probe_specs(pool, ["caption"], (), out_of_domain_texts(), out_of_domain_images(120))
    probes = await api._encode_probes(specs)
    ids_only = [{"id": p["id"], "modality": p["modality"]} for p in pool]
    evidence = collect(worker.index, COLLECTION, schema.vector_name, probes, ids_only)
    positives: dict[str, list[float]] = defaultdict(list)
    for e in evidence.examples:
        if e.label:
            positives[e.key].append(e.score)
    # No joint (hybrid) maps: how much a collection's keywords say depends on what text it
    # holds (none on uncaptioned photos, most of it on screenshots); its own fit learns that.
    return Prior(schema.model_id, schema.model_version, source, dict(positives), fit_maps(evidence.examples))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.cli.prior", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled:tiny-clip", help="model spec (as the `model` setting)")
    ap.add_argument("--pairs", type=Path, help="pairs.jsonl (needed for any model but the bundled one)")
    ap.add_argument("--out", type=Path, help="where to write the prior (default: the package's priors folder)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.pairs is not None:
        pairs = file_pairs(args.pairs)
        source = f"{args.pairs.name}: {len(pairs)} pairs"
    elif args.model.startswith("bundled:"):
        pairs, source = bundled_pairs(), f"{BUNDLED_PAIRS} held-out shape scenes and captions"
    else:
        raise SystemExit("give --pairs pairs.jsonl: pictures and captions of the kind this model will serve")
    prior = make_prior(args.model, pairs, source, args.threads)
    out = args.out or PRIORS_DIR / f"{prior.model_id.replace(':', '_').replace('/', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(prior.to_json(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    counts = ", ".join(f"{k} {len(v)}" for k, v in sorted(prior.positives.items()))
    print(f"wrote {out}: {prior.model_id} {prior.model_version}; positives: {counts}; maps: {', '.join(prior.maps)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
