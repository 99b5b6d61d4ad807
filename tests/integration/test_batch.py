"""The catalog pipeline for real: Ray Data, the bundled CLIP, the embedded store, the CLI.

A generated catalog of a few thousand images with a manifest is indexed, killed with
SIGKILL mid-run and resumed, run again (nothing re-encoded), and fed broken rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexing.store.edge import EdgeStore
from tests.fixtures.catalog import image_bytes, make_catalog, metadata, write_manifest

pytestmark = pytest.mark.slow

N_IMAGES = 2500


def loupe_batch(
    source: Path, data_dir: Path, *extra: str, errors: Path | None = None, summary: Path | None = None
) -> subprocess.Popen:
    errors = errors or data_dir.parent / "errors.jsonl"
    summary = summary or data_dir.parent / "summary.json"
    cmd = [
        sys.executable,
        "-m",
        "services.cli.main",
        "index",
        "--batch",
        str(source),
        "--bundled-models",
        "--data-dir",
        str(data_dir),
        "--errors",
        str(errors),
        "--summary-json",
        str(summary),
        "--progress-every",
        "1",
        "--ocr",
        "never",
        *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Its own session, so the kill below reaches the local Ray it starts as well.
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def wait_for_progress(proc: subprocess.Popen, low: int, high: int, timeout: float = 600) -> list[str]:
    """Read the run's output until a progress line reports low <= done < high; the lines read."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[loupe batch]") and low <= int(line.split()[2].split("/")[0].replace(",", "")) < high:
            return seen
        assert time.monotonic() < deadline, "".join(seen)
    raise AssertionError("the run ended before reaching the progress asked for:\n" + "".join(seen))


def stored(data_dir: Path, collection: str = "default") -> list[dict]:
    """Every payload in the collection."""
    store = EdgeStore(str(data_dir))
    try:
        out, after = [], None
        while True:
            points, after = store.scroll(collection, filter=None, limit=1000, after=after)
            out += [p.payload for p in points]
            if after is None:
                break
        assert len(out) == store.count(collection)
        return out
    finally:
        store.close()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return make_catalog(tmp_path_factory.mktemp("catalog"), N_IMAGES, size=48, kind="csv")


def test_kill_mid_run_then_resume_and_rerun(catalog, tmp_path):
    data_dir = tmp_path / "data"
    proc = loupe_batch(catalog.manifest, data_dir)
    # Kill once a real share of the catalog is in, but well before the end.
    seen = wait_for_progress(proc, 300, 2000)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)

    code, out = finish(loupe_batch(catalog.manifest, data_dir))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0, out
    assert summary["total"] == N_IMAGES and summary["counts"]["failed"] == 0, out
    # Everything stored before the kill is skipped, not encoded again.
    assert summary["counts"]["skipped"] >= 300, out
    assert summary["counts"]["skipped"] + summary["counts"]["indexed"] == N_IMAGES, out
    payloads = stored(data_dir)
    assert len(payloads) == N_IMAGES == summary["points"]
    assert len({p["id"] for p in payloads}) == N_IMAGES
    uris = {str(p) for p in catalog.images}
    assert sorted(s for p in payloads for s in p["sources"]) == sorted(uris)
    by_uri = {p["sources"][0]: p for p in payloads}
    first = by_uri[str(catalog.images[1])]
    assert first["meta"] == metadata(1) and first["model_id"] == "bundled:tiny-clip"

    # A second full run encodes nothing.
    code, out = finish(loupe_batch(catalog.manifest, data_dir))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0, out
    assert summary["counts"] == {"indexed": 0, "updated": 0, "skipped": N_IMAGES, "duplicate": 0, "failed": 0}, out
    assert "skipped 2,500" in out


def test_sigterm_stops_the_run_like_ctrl_c_and_its_ray_with_it(catalog, tmp_path):
    """What systemd or Docker send, to the command alone: a summary, exit 143, no Ray left."""
    import psutil

    data_dir = tmp_path / "data"
    proc = loupe_batch(catalog.manifest, data_dir)
    seen = wait_for_progress(proc, 100, N_IMAGES)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc, timeout=120)
    stopped_in = time.monotonic() - started
    assert code == 128 + signal.SIGTERM, "".join(seen) + out
    assert stopped_in < 60, stopped_in
    assert "interrupted:" in out, out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] and summary["stop_signal"] == signal.SIGTERM
    # Its private Ray shut down with it (same session as the command).
    for _ in range(30):
        left = [p for p in psutil.process_iter(["pid"]) if _session(p.info["pid"]) == proc.pid]
        if not left:
            break
        time.sleep(1)
    assert not left, [p.cmdline() for p in left]
    # Everything reported as indexed before the signal is stored (a rerun resumes from it).
    assert N_IMAGES > len(stored(data_dir)) >= summary["counts"]["indexed"] >= 100


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_broken_rows_go_to_the_report_and_the_rest_is_indexed(tmp_path):
    root = tmp_path / "cat"
    root.mkdir()
    good = []
    for i in range(20):
        (root / f"ok-{i}.jpg").write_bytes(image_bytes(i, 32, seed=5))
        good.append({"uri": f"ok-{i}.jpg", "price": float(i)})
    (root / "garbage.jpg").write_bytes(b"\x00" * 300)
    (root / "truncated.jpg").write_bytes(image_bytes(99, 64, seed=5)[:400])
    rows = good + [
        {"uri": "missing.jpg", "price": 1.0},
        {"uri": "garbage.jpg", "price": 2.0},
        {"uri": "truncated.jpg", "price": 3.0},
        {"uri": "ok-0.jpg", "price": "cheap"},
    ]
    write_manifest(root / "m.jsonl", rows)
    errors = tmp_path / "errors.jsonl"
    code, out = finish(loupe_batch(root / "m.jsonl", tmp_path / "data", errors=errors))
    assert code == 1, out
    report = [json.loads(line) for line in errors.read_text().splitlines()]
    by_uri = {Path(r["uri"]).name: r for r in report}
    assert set(by_uri) == {"missing.jpg", "garbage.jpg", "truncated.jpg", "ok-0.jpg"}, report
    assert by_uri["missing.jpg"]["stage"] == "read" and "no such file" in by_uri["missing.jpg"]["reason"]
    assert by_uri["garbage.jpg"]["stage"] == "read"
    assert by_uri["truncated.jpg"]["stage"] == "decode" and "truncated" in by_uri["truncated.jpg"]["reason"]
    assert by_uri["ok-0.jpg"]["stage"] == "metadata" and by_uri["ok-0.jpg"]["row"] == 24
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"]["indexed"] == 20 and summary["counts"]["failed"] == 4
    assert "failed 4" in out and str(errors) in out


def test_same_content_two_uris_and_changed_metadata(tmp_path):
    root = tmp_path / "cat"
    root.mkdir()
    data = image_bytes(7, 32, seed=9)
    (root / "a.jpg").write_bytes(data)
    (root / "copy-of-a.jpg").write_bytes(data)
    (root / "b.jpg").write_bytes(image_bytes(8, 32, seed=9))
    write_manifest(root / "m.csv", [{"uri": "a.jpg", "colour": "red"}, {"uri": "b.jpg", "colour": "blue"}])
    code, out = finish(loupe_batch(root / "m.csv", tmp_path / "data"))
    assert code == 0, out
    # The folder adds the copy: same content, another URI -> one point, both sources.
    code, out = finish(loupe_batch(root, tmp_path / "data"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["counts"]["duplicate"] == 1 and summary["counts"]["skipped"] == 2, out
    # Changed metadata for an unchanged image: payload only.
    write_manifest(root / "m.csv", [{"uri": "a.jpg", "colour": "green"}, {"uri": "b.jpg", "colour": "blue"}])
    code, out = finish(loupe_batch(root / "m.csv", tmp_path / "data"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["counts"]["updated"] == 1 and summary["counts"]["indexed"] == 0, out
    payloads = {Path(p["sources"][0]).name: p for p in stored(tmp_path / "data")}
    assert set(payloads) == {"a.jpg", "b.jpg"}
    assert sorted(Path(s).name for s in payloads["a.jpg"]["sources"]) == ["a.jpg", "copy-of-a.jpg"]
    assert payloads["a.jpg"]["meta"] == {"colour": "green"}


def test_store_in_use_and_bad_source_exit_2(tmp_path):
    code, out = finish(loupe_batch(tmp_path / "nothing-here", tmp_path / "data"))
    assert code == 2 and "neither a folder nor a manifest" in out
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(image_bytes(1, 32))
    holder = EdgeStore(str(tmp_path / "data"))  # the service would hold it like this
    try:
        code, out = finish(loupe_batch(tmp_path / "cat", tmp_path / "data"))
    finally:
        holder.close()
    assert code == 2 and "in use" in out, out


def test_audio_files_in_a_folder_are_transcribed_and_indexed(tmp_path):
    root = tmp_path / "cat"
    root.mkdir()
    (root / "a.jpg").write_bytes(image_bytes(1, 32, seed=4))
    audio = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "printer_error_en-us.wav"
    (root / "call-recording").write_bytes(audio.read_bytes())  # no extension: found by its bytes
    code, out = finish(loupe_batch(root, tmp_path / "data"))
    assert code == 0, out
    payloads = stored(tmp_path / "data")
    by_modality = {}
    for p in payloads:
        by_modality.setdefault(p["modality"], []).append(p)
    assert len(by_modality["image"]) == 1 and len(by_modality["audio"]) == 1
    recording = by_modality["audio"][0]
    assert "printer" in recording["text"].lower() and recording["duration_s"] > 3
    assert by_modality["audio_segment"] and all(s["parent_id"] == recording["id"] for s in by_modality["audio_segment"])


def _other_model(tmp_path: Path) -> Path:
    """The bundled CLIP with one weight nudged: same architecture, another model version."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src = Path(__file__).resolve().parents[2] / "encoders" / "clip" / "bundled" / "tiny-clip"
    dst = tmp_path / "tiny-clip-v2"
    shutil.copytree(src, dst)
    [weights] = dst.glob("*.safetensors")
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("logit_scale") or "ln_final" in k)
    tensors[name] = tensors[name] + np.asarray(0.01, tensors[name].dtype)
    save_file(tensors, weights)
    return dst


def test_reembedding_into_a_new_vector_then_switch(tmp_path):
    cat = make_catalog(tmp_path / "cat", 40, size=32, kind="jsonl")
    data = tmp_path / "data"
    code, out = finish(loupe_batch(cat.manifest, data))
    assert code == 0, out
    model = _other_model(tmp_path)
    # A second model without --new-vector is refused before anything is written.
    code, out = finish(loupe_batch(cat.manifest, data, "--model", f"local-dir:{model}"))
    assert code == 2 and "bundled:tiny-clip" in out, out
    code, out = finish(
        loupe_batch(
            cat.manifest, data, "--model", f"local-dir:{model}", "--vector", "clip_v2", "--new-vector", "--switch"
        )
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["counts"]["indexed"] == 40 and summary["points"] == 40, out
    assert "now the active one (was 'clip')" in out, out
    from indexing.index import Index

    index = Index(EdgeStore(str(data)))
    try:
        specs = index.vectors("default")
        assert [(v.vector_name, v.complete) for v in specs] == [("clip_v2", True), ("clip", True)]
        assert specs[0].model_id == "open_clip:local-dir:tiny-clip-v2"
    finally:
        index.close()
    # And again: nothing left to encode for the new model.
    code, out = finish(
        loupe_batch(cat.manifest, data, "--model", f"local-dir:{model}", "--vector", "clip_v2", "--new-vector")
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert code == 0 and summary["counts"]["skipped"] == 40, out
