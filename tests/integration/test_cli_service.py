"""The `loupe` CLI against the real service: index a folder, search, status, delete."""

from __future__ import annotations

import pytest

from encoders.clip.bundled.shapes import Scene, render
from services.cli import main as cli
from tests.fixtures import bad_media

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import random

    root = tmp_path_factory.mktemp("photos")
    (root / "nested").mkdir()
    scenes = [Scene("circle", "red", "blue"), Scene("square", "green", "white"), Scene("star", "yellow", "black")]
    for i, scene in enumerate(scenes):
        render(scene, random.Random(i), size=128).save(root / ("nested" if i == 2 else ".") / f"{scene.shape}.png")
    (root / "broken.jpg").write_bytes(bad_media.truncated_jpeg())
    (root / "notes.txt").write_text("not an image")
    return root


def run(service, capsys, *argv):
    code = cli.main(["--target", service.target, *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_index_search_status_delete(service, folder, capsys):
    code, out, _ = run(service, capsys, "index", str(folder), "--collection", "cli", "--meta", "batch=7")
    assert code == 1  # one file failed
    assert "indexed 3 item(s): 3 new" in out and "1 failed" in out
    assert "FAILED" in out and "broken.jpg" in out and "truncated" in out

    code, out, _ = run(service, capsys, "index", str(folder / "circle.png"), "--collection", "cli")
    assert code == 0 and "0 new, 1 already present" in out

    code, out, _ = run(service, capsys, "search", "a red circle on a blue background", "--collection", "cli")
    assert code == 0 and "bundled:tiny-clip" in out
    # rank, score, confidence ("-": the collection is not calibrated, and the footer says so), modality
    assert out.splitlines()[1].split()[2:4] == ["-", "image"] and "circle.png" in out.splitlines()[1]
    assert "no confidence: collection 'cli' is not calibrated" in out

    code, out, _ = run(
        service,
        capsys,
        "search",
        "--image",
        str(folder / "nested" / "star.png"),
        "--collection",
        "cli",
        "--limit",
        "1",
        "--json",
    )
    assert code == 0 and "star.png" in out and len(out.splitlines()) == 1

    code, out, _ = run(service, capsys, "status")
    assert code == 0 and "health: SERVING" in out and "collection cli: 3 item(s)" in out

    code, out, _ = run(service, capsys, "delete", "--where", "batch=7", "--collection", "cli")
    assert code == 0 and "deleted 3 item(s)" in out


def test_errors_are_reported_not_raised(service, capsys):
    code, _, err = run(service, capsys, "search", "  ", "--collection", "cli")
    assert code == 2 and "INVALID_ARGUMENT: query is empty" in err
    code, _, err = run(service, capsys, "delete", "missing-id", "--collection", "cli")
    assert code == 2 and "NOT_FOUND" in err
