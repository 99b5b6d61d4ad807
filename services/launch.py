"""`loupe serve`: run `serve run` on ray_config.yaml with the CLI's overrides applied."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from services.config import RequestLimits


def render_config(config: str | Path, *, bundled: bool = False, data_dir: str | None = None, port: int | None = None,
                  qdrant_url: str | None = None, model: str | None = None, http_port: int | None = None) -> dict:
    """The Serve config with the CLI's choices written into the app args."""
    cfg = yaml.safe_load(Path(config).read_text())
    app = cfg["applications"][0]
    app_args = app.setdefault("args", {})
    if bundled:
        app_args["profile"] = "bundled"
    if data_dir:
        app_args["data_dir"] = str(Path(data_dir).expanduser().resolve())
    elif "data_dir" in app_args:
        app_args["data_dir"] = str(Path(app_args["data_dir"]).expanduser().resolve())
    if qdrant_url:
        app_args["qdrant_url"] = qdrant_url
    if model:
        app_args.setdefault("encoder", {})["model"] = model
    if port is not None:
        cfg.setdefault("grpc_options", {})["port"] = port
    if http_port is not None:
        cfg.setdefault("http_options", {})["port"] = http_port
    return cfg


def serve_env(cfg: dict) -> dict[str, str]:
    env = dict(os.environ)
    # The gRPC proxy accepts 2 GiB by default; cap it at the config's request limit, so an
    # over-size request fails with RESOURCE_EXHAUSTED before it is read into memory.
    limits = cfg["applications"][0].get("args", {}).get("limits", {})
    max_bytes = limits.get("max_request_bytes", RequestLimits().max_request_bytes)
    env.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(max_bytes))
    env.setdefault("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", str(256 * 1024 * 1024))
    # Usage stats would try to reach the internet.
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def serve(config: str, ray_address: str | None = None, **overrides) -> int:
    cfg = render_config(config, **overrides)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="loupe-serve-", delete=False) as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    serve_bin = Path(sys.executable).with_name("serve")
    # "local" starts a private Ray instance; give an address to deploy onto a running cluster.
    cmd = [str(serve_bin) if serve_bin.exists() else "serve", "run", "--address", ray_address or "local", fh.name]
    app_args = cfg["applications"][0]["args"]
    print(f"loupe: profile {app_args.get('profile')}, data {app_args.get('qdrant_url') or app_args.get('data_dir')}, "
          f"gRPC port {cfg.get('grpc_options', {}).get('port', 9000)}", file=sys.stderr, flush=True)
    # Serve's working dir must let replicas import this project's packages.
    cwd = Path(__file__).resolve().parent.parent
    try:
        return subprocess.call(cmd, env=serve_env(cfg), cwd=cwd)
    except KeyboardInterrupt:
        return 130
    finally:
        os.unlink(fh.name)


class ServiceProcess:
    """`loupe serve` in a child process, for tests and benchmarks: start, wait for SERVING, stop.

        with ServiceProcess(["--bundled-models", "--data-dir", d]) as svc:
            LoupeClient(svc.target)...
    """

    def __init__(self, serve_args: list[str], *, log_path: Path, start_timeout_s: float = 420,
                 env: dict[str, str] | None = None) -> None:
        import socket

        def free_port() -> int:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]

        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.start_timeout_s = start_timeout_s
        self.cmd = [sys.executable, "-m", "services.cli", "serve", *serve_args, "--port", str(self.port),
                    "--http-port", str(free_port())]
        self.proc: subprocess.Popen | None = None
        self.env = env or {}

    def __enter__(self) -> "ServiceProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), **self.env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        try:
            self._wait_serving()
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self) -> None:
        import time

        from services.client import LoupeCallError, LoupeClient

        deadline = time.monotonic() + self.start_timeout_s
        with LoupeClient(self.target, timeout_s=10) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"loupe serve exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.health() == "SERVING":
                        return
                except LoupeCallError:
                    pass
                time.sleep(2)
        raise RuntimeError(f"loupe serve not SERVING after {self.start_timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self) -> None:
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return
        import psutil

        # Everything this service started, so that only it is killed if it will not stop (never
        # `ray stop`: that stops every Ray on the machine, other services and CI runs included).
        try:
            started = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            started = []
        os.killpg(self.proc.pid, signal.SIGINT)  # serve run tears down Serve and its local Ray
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for child in started:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
