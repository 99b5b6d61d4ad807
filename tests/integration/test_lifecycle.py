"""`loupe serve` as a supervisor sees it: start-up errors that a restart will not cure end it
within seconds with the reason; a served port is refused; SIGTERM stops everything it started
and frees the port; a SIGKILLed `loupe serve` leaves nothing behind for long; a killed Ingress
replica (the store's owner) loses no acknowledged write."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from services.cli.launch import ServiceProcess

pytestmark = pytest.mark.slow

SERVE = [sys.executable, "-m", "services.cli.main", "serve"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.name())
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(1)
    return _alive(procs)


def test_missing_weights_end_start_up_with_the_reason(tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    start = time.monotonic()
    done = subprocess.run(
        [
            *SERVE,
            "--bundled-models",
            "--model",
            str(empty),
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(_free_port()),
            "--http-port",
            str(_free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.monotonic() - start
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("loupe: cannot start:")]
    assert len(lines) == 1 and str(empty) in lines[0], done.stderr[-3000:]
    assert took < 150, took  # measured ~45 s on 2 idle cores, most of it Ray's own start


def test_a_served_port_is_refused_and_the_first_service_keeps_its_data(service, tmp_path):
    port = int(service.target.rsplit(":", 1)[1])
    with service.client() as client:
        before = client.status()
    start = time.monotonic()
    done = subprocess.run(
        [*SERVE, "--bundled-models", "--data-dir", str(tmp_path / "other"), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and time.monotonic() - start < 30
    assert f"port {port} is already served" in done.stderr and "--port" in done.stderr
    with service.client() as client:
        assert client.health() == "SERVING"
        assert client.status().store_backend == before.store_backend
        assert [c.name for c in client.status().collections] == [c.name for c in before.collections]


def _ingress_replica(svc: ServiceProcess) -> psutil.Process | None:
    """The Ingress replica of this service (not of another one running on the machine)."""
    for p in psutil.Process(svc.proc.pid).children(recursive=True):
        try:
            if "ServeReplica:loupe:Ingress" in " ".join(p.cmdline()):
                return p
        except psutil.NoSuchProcess:
            continue
    return None


def test_killed_ingress_replica_loses_no_acknowledged_write_and_sigterm_stops_everything(tmp_path):
    from services.client.sdk import LoupeCallError, TextInput

    svc = ServiceProcess(["--bundled-models", "--data-dir", str(tmp_path / "data")], log_path=tmp_path / "serve.log")
    with svc:
        acked: list[str] = []
        refused = 0

        def write() -> None:
            nonlocal refused
            deadline = time.monotonic() + 300
            with svc_client(svc) as client:
                i = 0
                while i < 300 and time.monotonic() < deadline:
                    try:
                        client.index_texts([TextInput(f"note {i}", id=f"n{i}")], collection="writes")
                        acked.append(f"n{i}")
                        i += 1
                    except LoupeCallError:  # UNAVAILABLE while the replica restarts: not acknowledged, retried
                        refused += 1
                        time.sleep(0.1)

        replica = _ingress_replica(svc)
        assert replica is not None
        writer = threading.Thread(target=write)
        writer.start()
        while len(acked) < 50:
            time.sleep(0.01)
        replica.kill()
        writer.join(timeout=600)
        assert refused > 0 and len(acked) == 300  # the kill landed between writes, then they went on
        assert _ingress_replica(svc).pid != replica.pid  # Serve started a new replica
        with svc_client(svc) as client:
            stored = {i for i in acked if _exists(client, i)}
        assert stored == set(acked) and len(acked) == 300, (len(acked), len(stored))

        started = psutil.Process(svc.proc.pid).children(recursive=True)
        start = time.monotonic()
        os.kill(svc.proc.pid, signal.SIGTERM)  # the process alone, as systemd or Docker would
        assert svc.proc.wait(timeout=60) == 0
        assert _wait_gone(started, 30) == []
        assert time.monotonic() - start < 45 and _port_free(svc.port)


def test_a_killed_loupe_serve_leaves_nothing_behind(tmp_path):
    svc = ServiceProcess(["--bundled-models", "--data-dir", str(tmp_path / "data")], log_path=tmp_path / "serve.log")
    svc.start()
    started = psutil.Process(svc.proc.pid).children(recursive=True)
    os.kill(svc.proc.pid, signal.SIGKILL)
    svc.proc.wait()
    left = _wait_gone(started, 150)
    assert left == [], left
    assert _port_free(svc.port)


def svc_client(svc: ServiceProcess):
    from services.client.sdk import LoupeClient

    return LoupeClient(svc.target, timeout_s=120)


def _exists(client, id: str) -> bool:
    from services.client.sdk import LoupeCallError

    try:
        client.get(id, collection="writes")
        return True
    except LoupeCallError:
        return False
