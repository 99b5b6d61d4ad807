"""`loupe serve`: run `serve run` on ray_config.yaml with the CLI's overrides applied."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from encoders.common.errors import InvalidInput, LoupeError
from services.secrets import SECRET_FIELDS, absolute_files, env_name, move_to_env, redact, scrub, secret_values

if TYPE_CHECKING:
    from services.config import LoupeSettings

# The variables that carry secret fields (LOUPE_API_KEY, LOUPE_CACHE__REDIS_URL, ...).
SECRET_ENV_NAMES = {env_name(field) for field in SECRET_FIELDS}


def app_args_of(config: str | Path | None) -> dict:
    """The app args of a Serve config (default: the repo's ray_config.yaml); {} if it has none."""
    from services.cli.main import DEFAULT_CONFIG

    path = Path(config or DEFAULT_CONFIG)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
        return dict((cfg.get("applications") or [{}])[0].get("args") or {})
    except (OSError, yaml.YAMLError, AttributeError, IndexError) as exc:
        raise InvalidInput(f"cannot read the app args of {path}: {exc}", field="config") from None


def render_config(
    config: str | Path,
    *,
    bundled: bool = False,
    data_dir: str | None = None,
    port: int | None = None,
    host: str | None = None,
    qdrant_url: str | None = None,
    model: str | None = None,
    http_port: int | None = None,
    clients_file: str | None = None,
    metrics_port: int | None = None,
) -> dict:
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
    if clients_file:
        app_args["clients_file"] = clients_file
    if model:
        app_args.setdefault("encoder", {})["model"] = model
    if metrics_port is not None:
        app_args.setdefault("metrics", {})["port"] = metrics_port
    if port is not None:
        app_args.setdefault("grpc", {})["port"] = port
    if host is not None:
        app_args.setdefault("grpc", {})["host"] = host
    if http_port is not None:
        cfg.setdefault("http_options", {})["port"] = http_port
    # Serve refuses an app whose config names a deployment it does not build: drop the ones
    # the settings (LOUPE_* environment included, as the app will see it) switch off.
    from services.config import load_settings

    settings = load_settings(app_args)
    ingress = next((d for d in app.get("deployments") or [] if d.get("name") == "Ingress"), {})
    app_args["ingress_replicas"] = int(ingress.get("num_replicas") or 1)
    if app_args["ingress_replicas"] > 1 and not settings.qdrant_url:
        raise InvalidInput(
            f"the Ingress owns the embedded store, so it runs as one replica (the config asks for "
            f"{app_args['ingress_replicas']}): set num_replicas: 1, or use a Qdrant server (qdrant_url) for more",
            field="deployments.Ingress.num_replicas",
        )
    if settings.clients_file:  # replicas run in the project folder: give them an absolute path
        app_args["clients_file"] = str(Path(settings.clients_file).expanduser().resolve())
    access(app_args)  # a bad clients file stops here, before Ray
    off = {name for name, on in (("Transcriber", settings.audio), ("Answerer", settings.ask.enabled)) if not on}
    if off and app.get("deployments"):
        app["deployments"] = [d for d in app["deployments"] if d.get("name") not in off]
    return cfg


def access(app_args: dict) -> str:
    """Who may call the service these app args configure, as the start-up line says it."""
    from services.config import load_settings
    from services.gateway.gate import Gateway

    return Gateway.from_settings(load_settings(app_args)).describe()


def serve_env(cfg: dict) -> dict[str, str]:
    from services.config import HOP_MESSAGE_BYTES

    env = dict(os.environ)
    # Calls between deployments (image batches) travel over gRPC; its 4 MiB default is too small.
    env.setdefault("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", str(HOP_MESSAGE_BYTES))
    # Usage stats would try to reach the internet.
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Replicas run their (async, non-blocking) methods and their handles' routers on the
    # replica's own event loop instead of one more thread each: measured 2-5 ms less per call
    # (benchmarks/bench_load.py). Blocking work goes to threads in the deployments.
    env.setdefault("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0")
    env.setdefault("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", "0")
    return env


# The health check that says the service is up: a Loupe service name, not "".
READY_SERVICE = "loupe.v1.SearchService"
# How long `loupe serve` waits for Serve to drain and stop after a signal before killing it.
STOP_TIMEOUT_S = 30.0
# Errors in the service's output that a restart will not cure: stop at once and say why.
_FATAL = re.compile(
    r"(?:encoders\.errors\.|indexing\.\w+\.)?(ModelUnavailable|StoreUnavailable|InvalidInput|"
    r"ValidationError|ModelMismatch): (?P<reason>.+)"
    r"|ValueError: (?P<config>Deployment '[^']+' does not exist.*)"
)


def port_in_use(port: int) -> str | None:
    """Why `port` cannot be ours: something answers on it, or it cannot be bound exclusively.

    Checked before Ray starts, so the refusal names the port at once (the Ingress's gRPC server
    would also fail to bind it, but only after the models load)."""
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return f"port {port} is already served on this machine"
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            return f"port {port} cannot be bound ({exc.strerror})"
    return None


def serve(config: str, ray_address: str | None = None, dashboard: bool = False, **overrides) -> int:
    """Run `serve run` under supervision: refuse a served port, stop within seconds on a start-up
    error a restart will not cure, and stop everything started on SIGTERM, SIGINT or SIGHUP."""
    from pydantic import ValidationError

    try:
        plan = prepare(config, ray_address, **overrides)
    except (ValidationError, ValueError, OSError, LoupeError) as exc:  # a bad config never reaches Ray
        # Errors may quote a value (pydantic's input_value): never a secret.
        why = scrub(str(exc), _written_secrets(config, overrides))
        print(f"loupe: cannot start: the config {config} is not valid: {why}", file=sys.stderr, flush=True)
        return 2
    cfg, settings = plan.cfg, plan.settings
    metrics, grpc_at = settings.metrics, settings.grpc
    ports = {"gRPC": grpc_at.port, "HTTP": cfg.get("http_options", {}).get("port", 8000)}
    if metrics.port:
        ports["metrics"] = metrics.port
    for name, port in ports.items():
        why = port_in_use(int(port))
        if why:
            print(
                f"loupe: cannot start: {why} ({name}). Another Loupe service (or another program) owns it: "
                f"stop it, or choose another port with --port / --http-port / --metrics-port (0: no metrics).",
                file=sys.stderr,
                flush=True,
            )
            return 2
    metrics_dir = None
    if metrics.port:  # every replica records into one folder; loupe serve serves the sum
        from services.serve.metrics import MULTIPROC_ENV

        sweep_metrics_dirs()
        metrics_dir = tempfile.mkdtemp(prefix=f"loupe-metrics-{os.getpid()}-")
        app = cfg["applications"][0]
        app.setdefault("runtime_env", {}).setdefault("env_vars", {})[MULTIPROC_ENV] = metrics_dir
    config_path = write_serve_config(cfg)
    # "local" starts a private Ray instance; give an address to deploy onto a running cluster.
    cmd = [
        sys.executable,
        "-m",
        "services.serve.driver",
        *(["--dashboard"] if dashboard else []),
        ray_address or "local",
        config_path,
    ]
    print(startup_line(plan), file=sys.stderr, flush=True)
    # Serve's working dir must let replicas import this project's packages.
    cwd = Path(__file__).resolve().parents[2]
    try:
        # The secrets ride in the environment of `serve run`: the private Ray it starts hands
        # that environment to every worker, where LoupeSettings reads them as LOUPE_* variables.
        env = {**serve_env(cfg), **plan.env}
        supervisor = Supervisor(
            cmd,
            env=env,
            cwd=cwd,
            grpc_port=grpc_at.port,
            grpc_host=grpc_at.host,
            secrets=secret_values(settings.model_dump()),
        )
        if metrics_dir:
            supervisor.metrics = (metrics.host, metrics.port, metrics_dir)
        http = cfg.get("http_options", {})
        supervisor.web = f"{http.get('host', '127.0.0.1')}:{ports['HTTP']}"
        return supervisor.run()
    finally:
        os.unlink(config_path)
        if metrics_dir:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)


@dataclass
class ServePlan:
    """What `loupe serve` starts: the config Ray is handed, free of secret values, and the
    secrets apart, for the environment of `serve run`."""

    cfg: dict
    # The effective settings (secrets included: never printed whole; see startup_line).
    settings: LoupeSettings
    # LOUPE_* variables carrying the secrets taken out of cfg.
    env: dict[str, str]
    # Who may call, as the start-up line says it.
    who: str


def prepare(config: str | Path, ray_address: str | None = None, **overrides) -> ServePlan:
    """render_config, then the secrets moved out of what Ray is handed."""
    from services.config import load_settings

    cfg = render_config(config, **overrides)
    app_args = cfg["applications"][0]["args"]
    settings = load_settings(app_args)
    who = access(app_args)  # before api_key leaves the app args
    return ServePlan(cfg=cfg, settings=settings, env=secrets_for_ray(cfg, settings, ray_address), who=who)


def secrets_for_ray(cfg: dict, settings: LoupeSettings, ray_address: str | None = None) -> dict[str, str]:
    """Take the secret values out of `cfg` (app args, and LOUPE_* secrets in its runtime_env):
    Ray keeps the config in its logs and dashboard. Returns the variables that carry them to
    the private Ray instead. A running cluster does not inherit our environment, so there they
    must be set on the cluster (its nodes' LOUPE_* variables or `<field>_file` files)."""
    app = cfg["applications"][0]
    env = move_to_env(app.setdefault("args", {}), settings)
    env.update(absolute_files(app["args"], settings, os.environ))
    env_vars = (app.get("runtime_env") or {}).get("env_vars") or {}
    for name in SECRET_ENV_NAMES & set(env_vars):
        env[name] = str(env_vars.pop(name))
    moved = sorted(set(env) & SECRET_ENV_NAMES)  # secret values, not the paths of their files
    if moved and (ray_address or "local") != "local":
        raise InvalidInput(
            f"{', '.join(moved)} can reach the Ray cluster at {ray_address} only inside the config it is "
            "handed, which Ray logs: set them in the environment of the cluster's Ray nodes instead, or use "
            '<field>_file options naming files present on them (README "Secrets")',
            field="ray_address",
        )
    return env


def write_serve_config(cfg: dict) -> str:
    """The config `serve run` reads, in a temporary file only its owner may read (mkstemp: 0600)."""
    fd, path = tempfile.mkstemp(suffix=".yaml", prefix="loupe-serve-")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


def startup_line(plan: ServePlan) -> str:
    """What `loupe serve` says it starts; a store URL's credentials show as ***."""
    from services.serve.grpcserver import address

    settings, http = plan.settings, plan.cfg.get("http_options", {})
    grpc_at = settings.grpc
    store = redact(settings.qdrant_url) if settings.qdrant_url else settings.data_dir
    return (
        f"loupe: profile {settings.profile}, data {store}, "
        f"gRPC on {address(grpc_at.host, grpc_at.port)}{_interfaces(grpc_at.host)}, "
        f"HTTP on {http.get('host', '127.0.0.1')}:{http.get('port', 8000)}; {plan.who}"
    )


def _written_secrets(config: str | Path, overrides: dict) -> set[str]:
    """Secret values a failed start may quote: those in the config's app args, the CLI's
    overrides and the LOUPE_* environment."""
    try:
        args = app_args_of(config)
    except LoupeError:
        args = {}
    loupe_env = {k: v for k, v in os.environ.items() if k.startswith("LOUPE_")}
    return secret_values(args) | secret_values(overrides) | secret_values(loupe_env)


def _interfaces(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return " (every interface: put a firewall or `loupe tls-proxy` in front)"
    if host in ("127.0.0.1", "::1", "localhost"):
        return " (this machine only; --host 0.0.0.0 for every interface)"
    return ""


def _die_with_parent() -> None:
    """In the child: SIGKILL when `loupe serve` dies, however it dies (Linux prctl PDEATHSIG).
    Ray's daemons share the fate of the `serve run` driver that started them. SIGINT is
    the child's stop signal."""
    import ctypes
    import signal as _signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(_signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:
        pass
    # A shell starts background jobs (`loupe serve &`, nohup) with SIGINT ignored, and the
    # child would inherit that: restore it, so the SIGINT that asks Serve to drain works.
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)


def state_path(port: int) -> Path:
    """Where `loupe serve` on `port` says what it is doing, for `loupe status` on this machine."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"loupe-{os.getuid()}"
    return base / f"serve-{port}.json"


def read_state(port: int) -> dict | None:
    """The state of a `loupe serve` on `port` that is still alive, or None."""
    import json

    try:
        state = json.loads(state_path(port).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


# Start-up milestones in Serve's output: what the service waits for next.
_ADDING = re.compile(r"Adding \d+ replicas? to Deployment\(name='(?P<name>\w+)'")
_REPLICA = re.compile(r"\(ServeReplica:\w+:(?P<name>\w+) pid=\d+\).*(?P<what>Started|Finished) initializing replica")


class Supervisor:
    """`serve run` in its own process group, its output relayed line by line."""

    def __init__(
        self,
        cmd: list[str],
        *,
        env: dict[str, str],
        cwd: Path,
        grpc_port: int,
        grpc_host: str = "127.0.0.1",
        secrets: Iterable[str] = (),
    ) -> None:
        from services.serve.grpcserver import address

        self.cmd, self.env, self.cwd, self.grpc_port = cmd, env, cwd, grpc_port
        # Values cut out of the relayed output: a replica's error may quote a URL's password.
        self.secrets = tuple(secrets)
        # Where this machine reaches the port: loopback when it listens on every interface.
        wildcard = grpc_host in ("0.0.0.0", "::", "")
        self.grpc_target = address("127.0.0.1" if wildcard else grpc_host, grpc_port)
        self.proc: subprocess.Popen | None = None
        self.stopping: int | None = None  # the signal that asked us to stop
        self.fatal: str | None = None  # a start-up error a restart will not cure
        self.ready = False  # SERVING once; errors in the output after that are calls', not start-up's
        self._started_at = time.time()
        # Deployment -> what it is doing ("waiting for a replica", "loading models").
        self._waiting: dict[str, str] = {"Ray": "starting"}
        self._state_warned = False
        # (host, port, folder) of the metrics endpoint, served once the service is; None: off.
        self.metrics: tuple[str, int, str] | None = None
        # host:port of the web page and JSON API (Serve's HTTP port), printed once serving.
        self.web: str | None = None
        self._exporter = None

    def _write_state(self, phase: str) -> None:
        import json

        path = state_path(self.grpc_port)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "port": self.grpc_port,
                        "phase": phase,
                        "started_at": self._started_at,
                        "waiting_for": self._waiting,
                    }
                )
            )
            os.replace(tmp, path)
        except OSError as exc:  # serving goes on; only `loupe status` loses the start-up detail
            if not self._state_warned:
                self._state_warned = True
                print(
                    f"loupe: cannot record start-up state at {path} ({exc.strerror or exc}); `loupe status` "
                    "will not say what a starting service waits for (set XDG_RUNTIME_DIR to a writable folder)",
                    file=sys.stderr,
                    flush=True,
                )

    def _track(self, line: str) -> None:
        """Follow start-up from Serve's log lines."""
        if "Started Serve in namespace" in line:
            self._waiting.pop("Ray", None)
            self._waiting["application"] = "building"
        elif "Imported and built app" in line:
            self._waiting.pop("application", None)
        elif m := _ADDING.search(line):
            self._waiting[m.group("name")] = "waiting for a replica to start"
        elif m := _REPLICA.search(line):
            if m.group("what") == "Started":
                self._waiting[m.group("name")] = "loading (models, store)"
            else:
                self._waiting.pop(m.group("name"), None)
        else:
            return
        self._write_state("starting")

    def run(self) -> int:
        import signal
        import threading

        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self._write_state("starting")
        relay = threading.Thread(target=self._relay, name="loupe-serve-output", daemon=True)
        relay.start()
        threading.Thread(target=self._watch_ready, name="loupe-serve-ready", daemon=True).start()
        while self.proc.poll() is None:
            if self.stopping is not None or self.fatal is not None:
                # Nothing to drain when start-up failed: a short grace, then kill.
                self.stop(STOP_TIMEOUT_S if self.fatal is None else 5.0)
                break
            relay.join(0.2)
        relay.join(2)
        try:
            state_path(self.grpc_port).unlink()
        except OSError:
            pass
        if self.fatal is not None:
            print(f"loupe: cannot start: {self.fatal}", file=sys.stderr, flush=True)
            return 2
        if self.stopping is not None:
            return 0
        return self.proc.returncode

    def _on_signal(self, signum, frame) -> None:
        self.stopping = signum
        self._write_state("stopping")

    def _relay(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = scrub(raw.decode(errors="replace"), self.secrets)
            sys.stderr.write(line)
            if not self.ready:
                self._track(line)
            m = None if self.ready else _FATAL.search(line)
            if m and self.fatal is None and self.stopping is None:
                self.fatal = (m.group("reason") or m.group("config")).strip()
        sys.stderr.flush()

    def _watch_ready(self) -> None:

        from services.client.sdk import LoupeCallError, LoupeClient

        with LoupeClient(self.grpc_target, api_key=os.environ.get("LOUPE_API_KEY"), timeout_s=5) as c:
            while self.proc is not None and self.proc.poll() is None and self.stopping is None and not self.fatal:
                try:
                    # A Loupe service name: another gRPC server on the port (one of Ray's own
                    # answers the plain health check) says NOT_FOUND to it.
                    if c.health(READY_SERVICE) == "SERVING":
                        self.ready = True
                        self._waiting = {}
                        self._write_state("serving")
                        self._serve_metrics()
                        print(f"loupe: serving: grpc://{self.grpc_target}", file=sys.stderr, flush=True)
                        if self.web:
                            print(f"web: http://{self.web}/", file=sys.stderr, flush=True)
                        return
                except LoupeCallError:
                    pass
                time.sleep(1)

    def _serve_metrics(self) -> None:
        if self.metrics is None:
            return
        from services.serve.metrics import serve_folder

        host, port, folder = self.metrics
        try:
            self._exporter = serve_folder(folder, host, port)
        except OSError as exc:  # taken since start-up: serving goes on without metrics
            print(f"loupe: metrics: cannot listen on {host}:{port} ({exc.strerror})", file=sys.stderr, flush=True)
            return
        print(f"metrics: http://{host}:{port}/metrics", file=sys.stderr, flush=True)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        assert self.proc is not None
        stop_group(self.proc, timeout_s)


def stop_group(proc: subprocess.Popen, timeout_s: float) -> None:
    """Stop a child that leads its own process group: SIGINT to the group (Serve drains and
    shuts its Ray down), SIGKILL after `timeout_s`, then any process it started that is left.
    Never `ray stop`: that stops every Ray on the machine, other services included."""
    import signal

    import psutil

    try:
        started = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    for child in started:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def sweep_metrics_dirs(root: str | None = None) -> list[str]:
    """Remove the metrics folders of `loupe serve` processes that are gone (killed with SIGKILL,
    they could not remove their own); returns those removed."""
    import glob
    import shutil

    removed = []
    for path in glob.glob(os.path.join(root or tempfile.gettempdir(), "loupe-metrics-*-*")):
        pid = os.path.basename(path).split("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except PermissionError:  # alive, someone else's
            pass
    return removed


class ServiceProcess:
    """`loupe serve` in a child process, for tests and benchmarks: start, wait for SERVING, stop.

    with ServiceProcess(["--bundled-models", "--data-dir", d]) as svc:
        LoupeClient(svc.target)...
    """

    def __init__(
        self, serve_args: list[str], *, log_path: Path, start_timeout_s: float = 420, env: dict[str, str] | None = None
    ) -> None:
        import socket

        def free_port() -> int:
            # Below the kernel's ephemeral range (32768+), which Ray's processes take their
            # ports from while the service starts, and above Ray's worker ports (10002-19999).
            import random

            for _ in range(200):
                port = random.randint(20000, 32000)
                with socket.socket() as s:
                    try:
                        s.bind(("127.0.0.1", port))
                    except OSError:
                        continue
                    return port
            raise RuntimeError("no free port in 20000-32000")

        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.http_port = free_port()
        self.web_url = f"http://127.0.0.1:{self.http_port}/"
        self.log_path = Path(log_path)
        self.start_timeout_s = start_timeout_s
        self.cmd = [
            sys.executable,
            "-m",
            "services.cli.main",
            "serve",
            *serve_args,
            "--port",
            str(self.port),
            "--http-port",
            str(self.http_port),
            "--metrics-port",
            str(self.metrics_port),
        ]
        self.proc: subprocess.Popen | None = None
        self.env = env or {}

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), **self.env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_serving()
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self) -> None:
        import time

        from services.client.sdk import LoupeCallError, LoupeClient

        deadline = time.monotonic() + self.start_timeout_s
        with LoupeClient(self.target, timeout_s=10) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"loupe serve exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    # SERVING, and `loupe serve` has seen it too (its metrics endpoint is up then).
                    serving = client.health(READY_SERVICE) == "SERVING"
                    if serving and "loupe: serving:" in self.log_path.read_text(errors="replace"):
                        return
                except LoupeCallError:
                    pass
                time.sleep(1)
        raise RuntimeError(f"loupe serve not SERVING after {self.start_timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_group(self.proc, 90)  # `loupe serve` stops its own `serve run` and Ray on SIGINT
