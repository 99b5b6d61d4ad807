"""The catalog pipeline on a Ray cluster: a head and a worker started with `ray start`,
the run joined with --address, writing through the qdrant-client backend."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from indexing.store.qdrant import QdrantStore
from tests.fixtures.catalog import make_catalog, metadata

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
N_IMAGES = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    # A cluster's nodes and drivers share one token, as on a real cluster.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    head = ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={_short_temp_dir()}"]
    groups = []
    try:
        for extra in (head, [f"--address={address}"]):
            # Each node in its own session: its daemons stay in that process group, so the
            # teardown stops this cluster only (`ray stop` would stop every Ray here, the
            # service other tests run on included).
            start = subprocess.Popen(
                [RAY, "start", *extra, *common],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            groups.append(start.pid)
            out, _ = start.communicate(timeout=120)
            assert start.returncode == 0, out
        yield address
    finally:
        for group in reversed(groups):
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _short_temp_dir() -> str:
    # Ray's socket paths live under it and must stay within the 107 bytes of AF_UNIX.
    return tempfile.mkdtemp(prefix="loupe-ray-", dir="/tmp")


def _alive_nodes(address: str) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1])


def test_batch_on_a_cluster_into_qdrant_client(cluster, tmp_path):
    assert _alive_nodes(cluster) == 2
    cat = make_catalog(tmp_path / "cat", N_IMAGES, size=48, kind="parquet")
    qdrant_dir = tmp_path / "qdrant"
    summary_path = tmp_path / "summary.json"
    cmd = [
        sys.executable,
        "-m",
        "services.cli.main",
        "index",
        "--batch",
        str(cat.manifest),
        "--bundled-models",
        "--address",
        cluster,
        "--qdrant-path",
        str(qdrant_dir),
        "--collection",
        "catalog",
        "--ocr",
        "never",
        "--errors",
        str(tmp_path / "errors.jsonl"),
        "--summary-json",
        str(summary_path),
        "--actors",
        "1",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["counts"]["indexed"] == N_IMAGES and summary["points"] == N_IMAGES
    store = QdrantStore(path=str(qdrant_dir))
    try:
        assert store.count("catalog") == N_IMAGES
        points, _ = store.scroll("catalog", filter=None, limit=N_IMAGES)
        by_uri = {p.payload["sources"][0]: p.payload for p in points}
        assert by_uri[str(cat.images[3])]["meta"] == metadata(3)
    finally:
        store.close()
