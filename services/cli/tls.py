"""`loupe tls-proxy`: TLS in front of the service, terminated by nginx (`grpc_pass`).

The gRPC port speaks plaintext only (on 127.0.0.1 by default, `grpc.host`). The recipe: nginx
listens for TLS on the outside (default 0.0.0.0:9443) and passes calls to the plaintext port
on 127.0.0.1, which stays off the network (the default host; otherwise the host's firewall,
or a container that publishes only the TLS port).

    loupe tls-proxy --cert server.pem --key server.key                 print the nginx config
    loupe tls-proxy --cert ... --key ... --client-ca ca.pem --run       run nginx (foreground)

With `--client-ca`, nginx asks every caller for a certificate signed by that CA (mutual TLS);
the Python client sends one with `cert_file`/`key_file` (`loupe --cert --key`). API keys still
travel in the metadata, now encrypted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from encoders.common.errors import InvalidInput
from services.config import RequestLimits

NGINX_TEMPLATE = """\
# nginx in front of Loupe's gRPC port (written by `loupe tls-proxy`).
worker_processes 1;
pid {run}/nginx.pid;
error_log {error_log} warn;
events {{ worker_connections 1024; }}

http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    # The service's own cap (limits.max_request_bytes) decides; nginx must not cut below it.
    client_max_body_size {max_body};

    server {{
        listen {listen} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:loupe_tls:1m;
{client_ca}
        location / {{
            grpc_pass grpc://{upstream};
            # Ask, audio and batches of images can take minutes.
            grpc_read_timeout 600s;
            grpc_send_timeout 600s;
            grpc_set_header x-forwarded-for $remote_addr;
        }}
    }}
}}
"""
CLIENT_CA = """\
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    p.add_argument("--key", required=True, help="its private key (PEM)")
    p.add_argument("--client-ca", default=None, help="require client certificates signed by this CA (PEM)")
    p.add_argument("--listen", default="0.0.0.0:9443", help="TLS address (default: 0.0.0.0:9443, every interface)")
    p.add_argument(
        "--upstream", default="127.0.0.1:9000", help="the service's plaintext gRPC port (default: 127.0.0.1:9000)"
    )
    p.add_argument("--run", action="store_true", help="run nginx in the foreground instead of printing the config")
    p.add_argument("--run-dir", default=None, help="nginx's pid, temp files and log (default: a new temp folder)")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="the nginx binary")


def render(
    *,
    cert: str,
    key: str,
    listen: str,
    upstream: str,
    run_dir: str,
    client_ca: str | None = None,
    max_body: int = RequestLimits().max_request_bytes,
) -> str:
    """The nginx config; InvalidInput naming a file that cannot be read."""
    files = {"--cert": cert, "--key": key} | ({"--client-ca": client_ca} if client_ca else {})
    for flag, path in files.items():
        if not os.access(path, os.R_OK):
            raise InvalidInput(f"{flag} {path}: no such readable file", field=flag)
    if ":" not in listen or ":" not in upstream:
        raise InvalidInput("--listen and --upstream are HOST:PORT", field="--listen")
    absolute = {name: str(Path(p).resolve()) for name, p in files.items()}
    return NGINX_TEMPLATE.format(
        run=run_dir,
        error_log=f"{run_dir}/error.log",
        max_body=max_body,
        listen=listen,
        cert=absolute["--cert"],
        key=absolute["--key"],
        client_ca=CLIENT_CA.format(ca=absolute["--client-ca"]) if client_ca else "",
        upstream=upstream,
    )


def run(args: argparse.Namespace) -> int:
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="loupe-tls-")
    try:
        config = render(
            cert=args.cert,
            key=args.key,
            listen=args.listen,
            upstream=args.upstream,
            run_dir=run_dir,
            client_ca=args.client_ca,
        )
    except InvalidInput as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 2
    if not args.run:
        print(config, end="")
        return 0
    if not shutil.which(args.nginx):
        print(
            f"error: nginx not found ({args.nginx}); install it (Debian: apt-get install nginx-light)", file=sys.stderr
        )
        return 2
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    # Run as root, nginx's workers are "nobody": they must reach the temp folders it makes here.
    Path(run_dir).chmod(0o755)
    conf = Path(run_dir) / "nginx.conf"
    conf.write_text(config)
    check = subprocess.run([args.nginx, "-t", "-q", "-c", str(conf), "-p", run_dir], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"error: nginx refused the config {conf}:\n{check.stderr.strip()}", file=sys.stderr)
        return 2
    print(f"loupe tls-proxy: TLS on {args.listen} -> {args.upstream} (nginx, config {conf})", flush=True)
    proc = subprocess.Popen([args.nginx, "-c", str(conf), "-p", run_dir, "-g", "daemon off;"])
    # nginx stops gracefully on SIGQUIT, at once on SIGTERM; pass ours on.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: proc.send_signal(signal.SIGQUIT))
    return proc.wait()
