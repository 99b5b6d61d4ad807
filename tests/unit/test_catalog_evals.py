"""The catalog eval sets (tests/fixtures/catalog_evals.py) are well formed: the committed cases
parse and are fresh, every relevant id is in the set's catalog, no query is one of the shipped
out-of-domain lists, and camera pictures look like a camera roll. No model is loaded."""

from __future__ import annotations

import json
import re

import pytest

from indexing.evals import load_cases
from indexing.negatives import out_of_domain_texts
from tests.fixtures import shapes_eval
from tests.fixtures.catalog_evals import AUDIO_OUT_OF_DOMAIN, CALLS, OUT_OF_DOMAIN, SETS

CAMERA_NAME = re.compile(r"^(IMG_\d{4}\.JPG|DSC\d{5}\.JPG|PXL_\d{8}_\d{9}\.jpg)$")


@pytest.fixture(scope="module", params=sorted(SETS))
def eval_set(request):
    return SETS[request.param]


def test_cases_parse_and_relevant_ids_are_in_the_catalog(eval_set):
    cases, _ = load_cases(eval_set.cases_file)
    ids = {it["id"] for it in eval_set.catalog()}
    assert len(ids) == len(eval_set.catalog())
    for case in cases:
        assert set(case.relevant_ids) <= ids, case.id
        assert case.image_id is None or case.image_id in ids
    assert sum(c.in_domain for c in cases) >= 20 and sum(not c.in_domain for c in cases) >= 5


def test_committed_cases_are_fresh(eval_set):
    found, files = eval_set.cases()
    committed = [json.loads(line) for line in eval_set.cases_file.read_text().splitlines()]
    assert committed == found, "rerun: python -m tests.fixtures.catalog_evals " + eval_set.name
    for name, data in files.items():
        assert (eval_set.folder / name).read_bytes() == data, name


def test_baseline_gates_every_mode(eval_set):
    figures = json.loads(eval_set.baseline.read_text())["figures"]
    found = "audio_segment" if eval_set.name == "audio" else "image"
    assert {"dense", "keyword", "hybrid", f"dense/{found}"} <= set(figures)


def test_queries_are_not_in_the_shipped_out_of_domain_lists(eval_set):
    shipped = {t.lower() for t in (*out_of_domain_texts(), *shapes_eval.OUT_OF_DOMAIN)}
    cases, _ = load_cases(eval_set.cases_file)
    assert not [c.text for c in cases if c.text and c.text.lower() in shipped]


def test_camera_pictures_have_camera_names_and_no_metadata():
    items = SETS["camera"].catalog()
    assert len(items) >= 90 and {it["modality"] for it in items} == {"image"}
    for it in items:
        assert CAMERA_NAME.match(it["source"]), it["source"]
        assert it["metadata"] == {} and it["id"] == it["source"].rsplit(".", 1)[0]
        assert it["data"][:2] == b"\xff\xd8"  # JPEG
    prefixes = {it["source"][:3] for it in items}
    assert prefixes == {"IMG", "DSC", "PXL"}


def test_mixed_has_pictures_and_texts_and_cases_for_each():
    items = SETS["mixed"].catalog()
    modality = {it["id"]: it["modality"] for it in items}
    assert all(not it["metadata"] for it in items)
    cases, _ = load_cases(SETS["mixed"].cases_file)
    wants = {frozenset(modality[i] for i in c.relevant_ids) for c in cases if c.in_domain}
    assert {frozenset({"image"}), frozenset({"text"}), frozenset({"image", "text"})} <= wants
    assert {c.result_modality for c in cases} >= {"all", "image", "text"}


def test_audio_calls_are_speech_clips_found_by_their_segments():
    references = json.loads((shapes_eval.FOLDER.parent / "audio" / "references.json").read_text())
    items = SETS["audio"].catalog()
    assert {it["modality"] for it in items} == {"audio"} and len({it["source"] for it in items}) == len(items)
    assert all(it["metadata"] == {"call": it["id"]} for it in items)
    assert all(references[name]["text"] for name, *_ in CALLS)
    cases, _ = load_cases(SETS["audio"].cases_file)
    calls = {it["id"] for it in items}
    segments = [c for c in cases if c.relevant_where]
    assert len(segments) >= 12 and all(c.modalities == ("audio_segment",) for c in segments)
    assert {c.relevant_where["call"] for c in segments} <= calls
    assert not set(AUDIO_OUT_OF_DOMAIN) & {t.lower() for t in (*OUT_OF_DOMAIN, *shapes_eval.OUT_OF_DOMAIN)}
