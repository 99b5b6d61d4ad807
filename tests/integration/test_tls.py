"""TLS in front of the service: `loupe tls-proxy --run` (a real nginx, `grpc_pass`) with a
generated certificate, the Python client and the CLI over TLS, plaintext and untrusted
callers refused at the TLS port, and client certificates when the proxy asks for them."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from services.client import LoupeCallError, LoupeClient, TextInput
from tests.fixtures.tls import Authority

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (.ci/run installs nginx-light)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority(folder)
    stranger = Authority(folder, "Someone else CA")
    return {
        "ca": ca.pem,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client-desk", server=False),
        "stranger_client": stranger.issue("client-stranger", server=False),
        "stranger_ca": stranger.pem,
    }


@contextmanager
def tls_proxy(service, pki, tmp_path: Path, *extra: str):
    port = free_port()
    cert, key = pki["server"]
    cmd = [sys.executable, "-m", "services.cli.main", "tls-proxy", "--cert", str(cert), "--key", str(key)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--upstream", service.target, "--run", "--run-dir", str(tmp_path)]
    proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        yield f"localhost:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_the_python_client_and_the_cli_speak_tls_and_plaintext_is_refused(service, pki, tmp_path) -> None:
    with tls_proxy(service, pki, tmp_path) as target:
        with LoupeClient(target, tls=True, ca_file=str(pki["ca"])) as client:
            assert client.health() == "SERVING"
            [(pid, _)] = client.index_texts([TextInput("a receipt over tls", id="tls-1")], collection="tls")
            assert client.get(pid, collection="tls").text == "a receipt over tls"
            # A big request passes the proxy (its body cap follows the service's own).
            big = [TextInput("x" * 9000 + str(i), id=f"tls-big-{i}") for i in range(60)]
            assert len(client.index_texts(big, collection="tls")) == 60
        with LoupeClient(target, timeout_s=5) as plain, pytest.raises(LoupeCallError) as err:
            plain.status()  # plaintext HTTP/2 to a TLS port
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        with LoupeClient(target, tls=True, ca_file=str(pki["stranger_ca"]), timeout_s=5) as untrusting:
            with pytest.raises(LoupeCallError) as err:
                untrusting.status()  # the server's certificate is not signed by the CA it trusts
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        cli = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "--target", target, "--tls", "--ca-file", str(pki["ca"])]
            + ["status"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0 and "health: SERVING" in cli.stdout, cli.stdout + cli.stderr
        assert "collection tls" in cli.stdout


def test_client_certificates_when_the_proxy_asks_for_them(service, pki, tmp_path) -> None:
    with tls_proxy(service, pki, tmp_path, "--client-ca", str(pki["ca"])) as target:
        cert, key = pki["client"]
        with LoupeClient(target, ca_file=str(pki["ca"]), cert_file=str(cert), key_file=str(key)) as client:
            assert client.health() == "SERVING"
        for who in (None, pki["stranger_client"]):
            kw = {"cert_file": str(who[0]), "key_file": str(who[1])} if who else {}
            with LoupeClient(target, ca_file=str(pki["ca"]), timeout_s=5, **kw) as refused:
                with pytest.raises(LoupeCallError) as err:
                    refused.status()
            # nginx answers a missing or foreign certificate with HTTP 400: no gRPC status
            assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def test_bad_files_are_named_before_nginx_starts(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "tls-proxy", "--cert", str(tmp_path / "none.pem")]
        + ["--key", str(tmp_path / "none.key")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--cert" in out.stderr and "none.pem" in out.stderr
    with pytest.raises(ValueError, match="cannot read the CA file"):
        LoupeClient("localhost:1", ca_file=str(tmp_path / "missing-ca.pem"))
