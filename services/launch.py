"""`loupe serve`: run `serve run` on ray_config.yaml with the CLI's overrides applied."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

# The gRPC proxy accepts up to 2 GiB by default; Loupe's own request cap is far lower.
PROXY_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def render_config(config: str | Path, *, bundled: bool = False, data_dir: str | None = None, port: int | None = None,
                  qdrant_url: str | None = None, model: str | None = None) -> dict:
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
    return cfg


def serve_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(PROXY_MAX_MESSAGE_BYTES))
    env.setdefault("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", str(256 * 1024 * 1024))
    # Usage stats would try to reach the internet.
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def serve(config: str, **overrides) -> int:
    cfg = render_config(config, **overrides)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="loupe-serve-", delete=False) as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    serve_bin = Path(sys.executable).with_name("serve")
    cmd = [str(serve_bin) if serve_bin.exists() else "serve", "run", fh.name]
    app_args = cfg["applications"][0]["args"]
    print(f"loupe: profile {app_args.get('profile')}, data {app_args.get('qdrant_url') or app_args.get('data_dir')}, "
          f"gRPC port {cfg.get('grpc_options', {}).get('port', 9000)}", file=sys.stderr, flush=True)
    # Serve's working dir must let replicas import this project's packages.
    cwd = Path(__file__).resolve().parent.parent
    try:
        return subprocess.call(cmd, env=serve_env(), cwd=cwd)
    except KeyboardInterrupt:
        return 130
    finally:
        os.unlink(fh.name)
