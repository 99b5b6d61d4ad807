"""Calibrated confidence and no_match, on a generated shapes collection with the bundled model
(in-process LoupeApi, embedded store): in-domain queries keep their hits, out-of-domain ones
get no_match, in every mode; the fit survives a restart and is refused for another model."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest

from encoders.common.errors import InvalidInput, NotFound
from encoders.common.metrics import recall_at_k
from indexing.calibration import INFO_KEY, Calibration, Logistic, Priors
from indexing.fitting import fit_logistic, weights
from indexing.negatives import out_of_domain_images, out_of_domain_texts
from indexing.probes import Example
from indexing.query import SearchQuery
from services.client.sdk import TextInput
from services.config import load_settings
from services.serve.workers import EncoderWorker, ThreadCalls
from tests.fixtures import shapes_eval
from tests.fixtures.inprocess import ApiClient

COLLECTION = shapes_eval.COLLECTION
MODES = ("dense", "keyword", "hybrid")


@pytest.fixture(scope="module")
def encoder():
    return EncoderWorker(load_settings({"profile": "bundled", "encoder": {"threads": 2}}))


@pytest.fixture(scope="module")
def world(encoder, tmp_path_factory):
    """{"client": the service in-process, "dir": its data folder, "fit": Calibrate's response}."""
    data_dir = str(tmp_path_factory.mktemp("calibration"))
    client = ApiClient.open(data_dir, encoder)
    shapes_eval.index_catalog(client)
    state = {"client": client, "dir": data_dir, "fit": client.calibrate(collection=COLLECTION)}
    yield state
    state["client"].close()


def captions() -> list[tuple[int, str]]:
    return [(i, it["text"]) for i, it in enumerate(it for it in shapes_eval.catalog() if it["modality"] == "text")]


# -- the fit itself ---------------------------------------------------------------------------
def test_fit_logistic_recovers_a_known_map_and_inverts():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, x.size) < 1 / (1 + np.exp(-(10 * x - 5)))).astype(float)
    m = fit_logistic(x, y, "dense", np.ones_like(x))
    assert m.a == pytest.approx(10, rel=0.1) and m.b == pytest.approx(-5, rel=0.1)
    for score in (0.2, 0.5, 0.8):
        assert m.score_at(m.confidence(score)) == pytest.approx(score, abs=1e-6)
    keyword = Logistic(a=2.0, b=-3.0, side="keyword", positives=1, negatives=1)
    assert keyword.confidence(keyword.score_at(0.5)) == pytest.approx(0.5)
    assert keyword.score_at(0.5) == pytest.approx(math.expm1(1.5))
    assert Logistic(a=-1.0, b=0.0, side="dense", positives=1, negatives=1).score_at(0.5) is None


def test_weights_give_half_to_positives_and_most_of_the_rest_to_hard_negatives():
    rows = [Example("k", 0.9, 1, 0)] * 4 + [Example("k", 0.6, 0, 1, hard=True)] * 2 + [Example("k", 0.1, 0, 2)] * 10
    w = weights(rows)
    assert (
        w[:4].sum() == pytest.approx(0.5) and w[4:6].sum() == pytest.approx(0.45) and w[6:].sum() == pytest.approx(0.05)
    )
    only_shuffled = [Example("k", 0.9, 1, 0), Example("k", 0.1, 0, 2)]
    assert weights(only_shuffled).tolist() == [0.5, 0.5]


def test_the_fit_is_stored_with_its_report(world):
    fit = world["fit"]
    assert fit.model_id == "bundled:tiny-clip" and fit.positives > 100 and fit.negatives > 100
    stored = world["client"].index.index.store.get_info(COLLECTION)[INFO_KEY]
    cal = Calibration.from_json(stored)
    assert Calibration.from_json(cal.to_json()) == cal
    assert {"text/dense/image", "text/dense/text", "text/keyword/text", "image/dense/image"} <= set(cal.maps)
    held = cal.report["held_out"]
    assert held["no_match"]["dense"]["in_domain"] <= 0.05
    bins = held["reliability"]
    assert bins[0]["observed"] <= 0.2 and bins[-1]["observed"] >= 0.8
    assert world["client"].status().collections[0].calibration.startswith("calibrated ")


# -- using it ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_in_domain_queries_keep_their_hits(world, mode):
    client = world["client"]
    # Keyword search finds texts only (the images carry no text); dense and hybrid find images.
    modality = "text" if mode == "keyword" else "image"
    flagged, floored, raw = 0, [], []
    for i, caption in captions():
        wanted = {f"{'cap' if modality == 'text' else 'img'}-{i}"}
        common = {"collection": COLLECTION, "mode": mode, "modalities": [modality], "limit": 10}
        result = client.search_text(caption, **common)
        everything = client.search_text(caption, min_confidence=0.0, **common)
        assert result.calibrated and not everything.no_match
        flagged += result.no_match
        floored.append(recall_at_k([h.id for h in result.hits], wanted, 10))
        raw.append(recall_at_k([h.id for h in everything.hits], wanted, 10))
        assert all(h.confidence >= 0.5 for h in result.hits)
    n = len(floored)
    assert flagged / n <= 0.05, f"{flagged} of {n} in-domain queries got no_match in {mode} mode"
    assert sum(floored) / n >= sum(raw) / n - 0.02


@pytest.mark.parametrize("mode", MODES)
def test_out_of_domain_queries_get_no_match(world, mode):
    shipped = set(out_of_domain_texts())
    assert not shipped & set(shapes_eval.OUT_OF_DOMAIN)  # not the queries the fit saw
    results = [world["client"].search_text(q, collection=COLLECTION, mode=mode) for q in shapes_eval.OUT_OF_DOMAIN]
    share = sum(r.no_match for r in results) / len(results)
    assert share >= 0.9, [
        (q, [round(h.confidence, 2) for h in r.hits]) for q, r in zip(shapes_eval.OUT_OF_DOMAIN, results)
    ]
    assert all(not r.hits for r in results if r.no_match)


def test_noise_images_get_no_match_and_shapes_do_not(world):
    client = world["client"]
    noise = out_of_domain_images(24, seed=4711)  # other draws than the fit's
    share = sum(client.search_image(b, collection=COLLECTION).no_match for b in noise) / len(noise)
    assert share >= 0.9
    items = [it for it in shapes_eval.catalog() if it["modality"] == "image"][:30]
    found = [client.search_image(it["data"], collection=COLLECTION) for it in items]
    assert not any(r.no_match for r in found)
    assert sum(r.hits[0].id == it["id"] for r, it in zip(found, items)) >= 28


def test_min_confidence_option_and_uncalibrated_collections(world):
    client = world["client"]
    query = "a golden retriever puppy in the snow"
    everything = client.search_text(query, collection=COLLECTION, min_confidence=0.0, limit=5)
    assert len(everything.hits) == 5 and not everything.no_match
    assert all(0.0 <= h.confidence <= 1.0 for h in everything.hits)
    assert [h.score for h in everything.hits] == sorted((h.score for h in everything.hits), reverse=True)
    assert client.search_text(shapes_eval.catalog()[1]["text"], collection=COLLECTION, min_confidence=1.0).no_match
    with pytest.raises(InvalidInput) as info:
        client.search_text(query, collection=COLLECTION, min_confidence=1.5)
    assert info.value.field == "options.min_confidence"

    client.index_texts([TextInput(t) for t in ("alpha", "beta", "gamma")], collection="plain")
    plain = client.search_text(query, collection="plain")
    assert len(plain.hits) == 3 and not plain.calibrated and not plain.no_match
    assert all(h.confidence is None for h in plain.hits) and "not calibrated" in plain.calibration


def test_ask_retrieves_only_what_passes_the_floor(world, encoder):
    from services.serve.ask import AnswerWorker

    worker = AnswerWorker.__new__(AnswerWorker)  # the retrieval step alone, without a VLM
    worker.encoder, worker.index = ThreadCalls(encoder), ThreadCalls(world["client"].index)
    worker.modalities, worker.min_score, worker.min_confidence, worker.roots = (), 0.2, 0.5, []
    worker._info = None
    query = SearchQuery(collection=COLLECTION, mode="hybrid")
    assert asyncio.run(worker._retrieve("how do I change my login email", 3, query)) == []
    i, caption = captions()[7]
    found = asyncio.run(worker._retrieve(caption, 3, query))
    assert found and {c.id for c in found} & {f"img-{i}", f"cap-{i}"}

    # One call to the index per retrieval, on an uncalibrated collection too, and the
    # encoder's identity asked once for the worker's life.
    calls: list[str] = []

    class Counting:
        def __init__(self, target, name):
            self.target, self.name = target, name

        def __getattr__(self, attr):
            calls.append(f"{self.name}.{attr}")
            return getattr(self.target, attr)

    worker.encoder, worker.index = Counting(ThreadCalls(encoder), "encoder"), Counting(worker.index, "index")
    worker._info = None
    world["client"].index_texts([TextInput("a plain note about cats")], collection="ask-plain")
    for question in ("a note about cats", "cats"):
        asyncio.run(worker._retrieve(question, 3, SearchQuery(collection="ask-plain", mode="hybrid")))
    assert calls.count("index.search") == 2 and calls.count("encoder.info") == 1


def test_calibrate_errors(world, tmp_path):
    client = world["client"]
    with pytest.raises(InvalidInput) as info:
        client.calibrate(collection=COLLECTION, sample_items=5)
    assert info.value.field == "sample_items"
    with pytest.raises(NotFound):
        client.calibrate(collection="nope")
    with pytest.raises(InvalidInput) as info:
        client.calibrate(collection=COLLECTION, cases=[("", ["img-1"])])
    assert info.value.field == "cases[0].text"
    with pytest.raises(InvalidInput) as info:
        client.calibrate(collection=COLLECTION, cases=[("a red star", ["img-1", "img-1"])])
    assert info.value.field == "cases[0].relevant_ids"
    with pytest.raises(InvalidInput) as info:
        client.calibrate(collection=COLLECTION, cases=[("a red star", ["img-1"]), (b"not an image", ["img-2"])])
    assert info.value.field == "cases[1].image" and "cases[1].image:" in info.value.reason
    client.index_texts([TextInput("just one note")], collection="tiny")
    # One text gives no positives of its own; the model prior lends them.
    fit = client.calibrate(collection="tiny")
    assert "model prior" in json.loads(fit.report_json)["evidence"]["text/dense/text"]["positives"]
    # Without a prior for the model there is nothing to fit.
    worker = client.index
    kept, worker.priors = worker.priors, Priors(folder=Path(tmp_path))
    try:
        client.index_texts([TextInput("another lone note")], collection="tiny2")
        with pytest.raises(InvalidInput) as info:
            client.calibrate(collection="tiny2")
    finally:
        worker.priors = kept
    assert "too few examples" in info.value.reason
    assert client.search_text("note", collection="tiny2").calibrated is False  # nothing stored


def test_labelled_cases_join_the_probes(world):
    caption = captions()[4][1]
    fit = world["client"].calibrate(collection=COLLECTION, cases=[(caption, ["img-4"]), ("a spreadsheet of sales", [])])

    probes = json.loads(fit.report_json)["probes"]
    assert probes["text case"] == 1 and probes["text case (negative)"] == 1
    # Down-voted hits (a feedback export's not_relevant ids) join as negatives of their query.
    rejected = [f"img-{i}" for i in range(20, 30)]
    plain = world["client"].calibrate(collection=COLLECTION, cases=[(caption, ["img-4"])])
    more = world["client"].calibrate(collection=COLLECTION, cases=[(caption, ["img-4"], rejected)])
    assert more.negatives >= plain.negatives + len(rejected)
    with pytest.raises(InvalidInput) as info:
        world["client"].calibrate(collection=COLLECTION, cases=[(caption, ["img-4"], ["img-4"])])
    assert info.value.field == "cases[0].not_relevant_ids"


def test_the_calibration_survives_a_restart_and_another_model_refuses_it(world, encoder):
    caption = captions()[10][1]
    before = world["client"].search_text(caption, collection=COLLECTION, mode="hybrid")
    world["client"].close()
    world["client"] = client = ApiClient.open(world["dir"], encoder)
    after = client.search_text(caption, collection=COLLECTION, mode="hybrid")
    assert after.calibrated and [(h.id, h.confidence) for h in after.hits] == [
        (h.id, h.confidence) for h in before.hits
    ]

    # A re-embedding with another model leaves a calibration of the old one: not used.
    store = client.index.index.store
    stale = {**store.get_info(COLLECTION)[INFO_KEY], "model_version": "another-version"}
    store.update_info(COLLECTION, {INFO_KEY: stale})
    client.index.calibrations.forget(COLLECTION)
    refused = client.search_text(caption, collection=COLLECTION)
    assert not refused.calibrated and not refused.no_match and len(refused.hits) == 10
    assert "calibrated for bundled:tiny-clip another-version" in refused.calibration
    (status,) = [c for c in client.status().collections if c.name == COLLECTION]
    assert "recalibrate" in status.calibration


def test_descriptive_file_names_are_probes_and_camera_names_are_not():
    from indexing.probes import probe_specs

    pool = [
        {
            "id": "a",
            "modality": "image",
            "text": "",
            "meta": {},
            "thumbnail": "",
            "sources": ["shop/blue_ceramic_mug.jpg"],
        },
        {"id": "b", "modality": "image", "text": "", "meta": {}, "thumbnail": "", "sources": ["DCIM/IMG_0412.JPG"]},
        {"id": "c", "modality": "image", "text": "", "meta": {}, "thumbnail": "", "sources": ["PXL_20240611_0930.jpg"]},
    ]
    specs = [s for s in probe_specs(pool, ["caption"]) if s.origin == "file name"]
    assert [(s.text, s.relevant) for s in specs] == [("blue ceramic mug", ("a",))]
