import math

import pytest

from encoders.common.metrics import cer, edit_distance, ndcg_at_k, recall_at_k, reciprocal_rank, wer


def test_edit_distance_counts_each_kind_of_edit():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b"], ["a", "b"]) == 0


def test_cer_collapses_or_drops_whitespace():
    assert cer("ab  cd", "ab cd") == 0.0
    assert cer("ab cd", "abcd") == pytest.approx(1 / 5)
    assert cer("ab cd", "abcd", spaces=False) == 0.0
    assert cer("", "x") == 1.0


def test_wer_normalises_before_counting():
    assert wer("It costs 42 dollars.", "it costs forty-two dollars") == 0.0
    assert wer("", "") == 0.0 and math.isinf(wer("", "hello"))


def test_recall_at_k():
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"a", "d"}, 2) == 0.5
    assert recall_at_k(ranked, {"a", "d"}, 4) == 1.0
    assert recall_at_k(ranked, {"z"}, 4) == 0.0
    assert recall_at_k(ranked, set(), 1) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(ranked, {"a"}, 0)


def test_reciprocal_rank():
    assert reciprocal_rank(["x", "a", "b"], {"a", "b"}) == 0.5
    assert reciprocal_rank(["x"], {"a"}) == 0.0


def test_ndcg_binary_and_graded():
    assert ndcg_at_k(["a", "b"], {"a"}, 2) == 1.0
    assert ndcg_at_k(["b", "a"], {"a"}, 2) == pytest.approx(1 / math.log2(3))
    graded = {"a": 3.0, "b": 1.0}
    assert ndcg_at_k(["a", "b"], graded, 2) == 1.0
    swapped = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert ndcg_at_k(["b", "a"], graded, 2) == pytest.approx(swapped)
    assert ndcg_at_k(["a", "a"], {"a", "b"}, 2) < 1.0  # a repeat earns nothing
    assert ndcg_at_k(["x"], {}, 3) == 1.0


def test_metrics_folders_of_dead_services_are_swept(tmp_path) -> None:
    import os

    from services.cli.launch import sweep_metrics_dirs

    dead = tmp_path / f"loupe-metrics-{2**22 + 12345}-abc"  # above Linux's largest pid: no such process
    dead.mkdir()
    alive = tmp_path / f"loupe-metrics-{os.getpid()}-def"
    alive.mkdir()
    other = tmp_path / "loupe-metrics-notapid-x"
    other.mkdir()
    assert sweep_metrics_dirs(str(tmp_path)) == [str(dead)]
    assert alive.exists() and other.exists() and not dead.exists()
