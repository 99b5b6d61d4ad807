"""The batch writer without Ray: planning (skip, update, duplicate, encode), writing, outcomes;
and the progress lines and summary a user reads."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from indexing.batch.report import BatchSummary, ErrorReport, Progress
from indexing.batch.writer import CatalogWriter, StoreSpec
from indexing.types import CollectionSchema

SCHEMA = CollectionSchema(vector_name="clip", dim=4, model_id="test:model", model_version="v1")


def _row(content: bytes, uri: str, meta: dict | None = None) -> dict:
    return {
        "sha256": hashlib.sha256(content).hexdigest(),
        "uri": uri,
        "meta": json.dumps(meta) if meta else "",
        "status": "",
    }


def _encoded(row: dict, seed: int) -> dict:
    v = np.random.default_rng(seed).normal(size=4).astype(np.float32)
    return {
        **row,
        "vector": (v / np.linalg.norm(v)).tobytes(),
        "width": 8,
        "height": 8,
        "text": None,
        "modality": "image",
    }


@pytest.fixture(params=["edge", "qdrant-local"])
def spec(request, tmp_path):
    return (
        StoreSpec(data_dir=str(tmp_path / "edge"))
        if request.param == "edge"
        else StoreSpec(qdrant_path=str(tmp_path / "qdrant"))
    )


def test_plan_then_write_then_plan_again(spec):
    writer = CatalogWriter(spec, "cat", SCHEMA)
    a, b = _row(b"a", "/x/a.jpg", {"colour": "red"}), _row(b"b", "/x/b.jpg")
    planned = writer.plan([dict(a), dict(b)])
    assert [r["status"] for r in planned] == ["", ""] and not any(r["known"] for r in planned)
    copy_of_a = _row(b"a", "/x/copy.jpg")
    outcomes = writer.write(
        [_encoded(planned[0], 1), _encoded(planned[1], 2), _encoded(dict(copy_of_a, known=False), 1)]
    )
    assert [o["status"] for o in outcomes] == ["indexed", "indexed", "duplicate"]
    assert writer.describe()["points"] == 2
    again = writer.plan([dict(a), dict(b), _row(b"a", "/x/a.jpg", {"colour": "green"}), _row(b"b", "/y/b2.jpg")])
    assert [r["status"] for r in again] == ["skipped", "skipped", "updated", "duplicate"]
    payload = writer.index.get("cat", "sha256:" + a["sha256"])
    assert payload["meta"] == {"colour": "green"}
    assert sorted(payload["sources"]) == ["/x/a.jpg", "/x/copy.jpg"]
    assert "/y/b2.jpg" in writer.index.get("cat", "sha256:" + b["sha256"])["sources"]
    writer.close()


def test_a_bad_item_fails_alone(spec):
    writer = CatalogWriter(spec, "cat", SCHEMA)
    good, bad = _encoded(_row(b"g", "/g.jpg"), 1), _encoded(_row(b"h", "/h.jpg"), 2)
    bad["vector"] = np.full(4, np.nan, np.float32).tobytes()
    outcomes = writer.write([good, bad])
    assert outcomes[0] == {"status": "indexed"}
    assert outcomes[1]["status"] == "failed" and outcomes[1]["stage"] == "store" and "NaN" in outcomes[1]["reason"]
    writer.close()


def test_another_model_is_refused_unless_a_new_vector_is_asked_for(spec):
    from encoders.common.errors import ModelMismatch

    CatalogWriter(spec, "cat", SCHEMA).close()
    other = CollectionSchema(vector_name="clip", dim=4, model_id="test:other", model_version="v2")
    with pytest.raises(ModelMismatch):
        CatalogWriter(spec, "cat", other)
    writer = CatalogWriter(spec, "cat", CollectionSchema("clip_v2", 4, "test:other", "v2"), new_vector=True)
    assert writer.describe()["vector"] == "clip_v2"
    writer.close()


def test_progress_lines_and_summary():
    out = io.StringIO()
    meter = Progress(10, stream=out, every_s=0.0, bar=False)
    meter.update(["failed"])
    meter.start()
    meter.update(["indexed"] * 4 + ["skipped"])
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("[loupe batch] 6/10 (60.0%)") and "items/s, ETA" in line and "failed 1" in line
    summary = BatchSummary("cat", "clip", "test:model", total=10, seconds=5.0, startup_s=1.0, error_report="e.jsonl")
    summary.counts.update(indexed=7, skipped=2, failed=1)
    text = summary.text()
    assert "10 of 10 items" in text and "2.5 items/s" in text and "failed 1" in text and "e.jsonl" in text
    assert summary.to_json()["done"] == 10


def test_steady_pace_counts_rows_after_the_first_encoded_batch():
    """Start-up and the encode actors' model load stay out of the steady figure: it is the
    rows after the first encoded batch over the time from that batch to the last."""
    summary = BatchSummary("cat", "clip", "test:model", total=128, started_at=100.0)
    summary.saw_encoded([132.0] * 32)
    assert summary.first_encoded_s == 32.0 and summary.steady_items_per_s == 0.0
    assert "from then" not in summary.text()  # one batch: no pace to give
    summary.saw_encoded([130.0] * 32 + [134.0] * 32)  # outcomes come in any order and grouping
    assert summary.first_encoded_s == 30.0 and summary.steady_items_per_s == 64 / 4.0
    summary.saw_encoded([])
    summary.saw_encoded([136.0] * 32)
    assert summary.steady_items_per_s == 96 / 6.0 and "first batch encoded after 30.0 s" in summary.text()
    assert "_encoded" not in summary.to_json() and summary.to_json()["steady_items_per_s"] == 16.0


def test_error_report_lines(tmp_path):
    report = ErrorReport(str(tmp_path / "e.jsonl"))
    report.add({"uri": "/a.jpg", "row": 3, "stage": "decode", "reason": "truncated"})
    report.close()
    assert json.loads((tmp_path / "e.jsonl").read_text()) == {
        "uri": "/a.jpg",
        "row": 3,
        "stage": "decode",
        "reason": "truncated",
    }


def test_reembedding_fills_a_new_vector_then_switches(spec, tmp_path):
    """Old model's vector keeps serving; the run fills the new one (batch rows, then a
    catch-up from sources and stored text), then switches."""
    from encoders.clip.encoder import ClipEncoder, ClipOptions
    from encoders.image.decode import ImageLimits
    from indexing.index import Index, NewItem
    from indexing.types import Modality
    from tests.fixtures.catalog import image_bytes

    files = []
    for i in range(3):
        path = tmp_path / f"img-{i}.jpg"
        path.write_bytes(image_bytes(i, 40, seed=3))
        files.append(path)
    old = CatalogWriter(spec, "cat", SCHEMA)
    rows = [_row(p.read_bytes(), str(p)) for p in files]
    old.write([_encoded(dict(r, known=False), i) for i, r in enumerate(rows)])
    vec = np.ones(4, np.float32) / 2
    old.index.upsert(
        "cat",
        [
            NewItem(
                public_id="note-1",
                sha256="ab" * 32,
                modality=Modality.TEXT,
                vector=vec,
                text="a red circle on a blue background",
                source="crm",
            )
        ],
        SCHEMA,
    )
    old.close()

    clip_options = ClipOptions(model="bundled:tiny-clip", device="cpu", threads=1)
    clip = ClipEncoder(clip_options).load()
    new_schema = CollectionSchema("clip_v2", clip.dim, clip.model_id, clip.model_version)
    writer = CatalogWriter(spec, "cat", new_schema, new_vector=True)
    # The batch source covers the first image only.
    planned = writer.plan([dict(rows[0])])
    assert planned[0]["status"] == "" and planned[0]["known"]
    from PIL import Image

    vector = clip.encode_images([Image.open(files[0]).convert("RGB")])[0]
    assert writer.write(
        [{**planned[0], "vector": vector.tobytes(), "width": 40, "height": 40, "text": None, "modality": "image"}]
    ) == [{"status": "indexed"}]
    assert "incomplete: 3 item(s)" in writer.complete(switch=True)
    assert writer.catch_up(clip_options, ImageLimits()) == []
    assert "now the active one (was 'clip')" in writer.complete(switch=True)
    index: Index = writer.index
    assert [v.vector_name for v in index.vectors("cat")] == ["clip_v2", "clip"]
    # Searches with either model find the items through their own vector.
    query = clip.encode_images([Image.open(files[2]).convert("RGB")])[0]
    hits = index.search("cat", query, limit=1, vector_name="clip_v2")
    assert hits[0][0]["sources"] == [str(files[2])] and hits[0][1] > 0.99
    text_hit = index.search(
        "cat",
        clip.encode_texts(["a red circle on a blue background"]).vectors[0],
        limit=1,
        vector_name="clip_v2",
        modalities=(Modality.TEXT,),
    )
    assert text_hit[0][0]["id"] == "note-1" and text_hit[0][0]["sources"] == ["crm"]
    assert index.search("cat", vec, limit=1, vector_name="clip")[0][0]["id"] == "note-1"
    writer.close()


def test_catch_up_reports_items_it_cannot_refill(spec, tmp_path):
    from encoders.clip.encoder import ClipEncoder, ClipOptions
    from encoders.image.decode import ImageLimits
    from tests.fixtures.catalog import image_bytes

    path = tmp_path / "gone.jpg"
    path.write_bytes(image_bytes(1, 40))
    old = CatalogWriter(spec, "cat", SCHEMA)
    old.write([_encoded(dict(_row(path.read_bytes(), str(path)), known=False), 1)])
    old.close()
    path.unlink()
    clip_options = ClipOptions(model="bundled:tiny-clip", device="cpu", threads=1)
    clip = ClipEncoder(clip_options).load()
    writer = CatalogWriter(
        spec, "cat", CollectionSchema("v2", clip.dim, clip.model_id, clip.model_version), new_vector=True
    )
    [failure] = writer.catch_up(clip_options, ImageLimits())
    assert failure["stage"] == "re-embed" and "no readable source" in failure["reason"] and "gone.jpg" in failure["uri"]
    assert "incomplete: 1 item(s)" in writer.complete(switch=True)
    assert writer.index.vectors("cat")[0].vector_name == "clip"
    writer.close()


def test_encode_pool_defaults_and_refuses_settings_that_would_hang(monkeypatch):
    import ray

    from encoders.common.errors import InvalidInput
    from indexing.batch.pipeline import BatchOptions, _encode_pool

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert _encode_pool(BatchOptions()) == (1, 2, 1.0)
    assert _encode_pool(BatchOptions(encode_actors=2, encode_threads=1)) == (2, 1, 0.5)
    with pytest.raises(InvalidInput, match="less than one of the cluster's 2 CPUs"):
        _encode_pool(BatchOptions(encode_actors=2, encode_cpus=0.75))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    assert _encode_pool(BatchOptions()) == (8, 2, 1.0)
